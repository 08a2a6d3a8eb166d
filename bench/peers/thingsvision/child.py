"""Run by thingsvision's own interpreter (made by env.sh beside this file): extract lite0 features of an image
folder the way a thingsvision user does, then pool and save them; prints one JSON line.

    python bench/peers/thingsvision/child.py ROOT WEIGHTS.pt SIZE LAYERS OUT_DIR

thingsvision keeps each layer's full activation maps in memory (``flatten_acts=False``); the maps
are averaged over height and width afterwards (GAP, TransferLab's default pooling) and saved with
thingsvision's own ``save_features`` as HDF5. numpy 2 removed ``np.AxisError``, which thingsvision
2.7.3 still reads at import: it is restored from ``np.exceptions`` first.
"""
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

np.AxisError = np.exceptions.AxisError


def main(root, weights, size, layers, out):
    import torch
    from thingsvision import get_extractor
    from thingsvision.utils.data import DataLoader, ImageDataset
    from thingsvision.utils.storing import save_features

    size, layers, out = int(size), layers.split(","), Path(out)
    t = time.perf_counter()
    extractor = get_extractor(model_name="tf_efficientnet_lite0", source="timm", pretrained=False, device="cpu")
    extractor.model.load_state_dict(torch.load(weights, map_location="cpu"))
    extractor.model.eval()
    # timm models come with their own 224-px transform, which thingsvision's get_transformations and
    # get_default_transformation return whatever size is asked for; its default pipeline, built here
    # at SIZE with lite0's mean and std instead
    import torchvision.transforms as T

    transforms = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                            T.ToTensor(), T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    dataset = ImageDataset(root=root, out_path=str(out / "order"), backend=extractor.get_backend(),
                           transforms=transforms)
    batches = DataLoader(dataset=dataset, batch_size=64, backend=extractor.get_backend())
    assert next(iter(batches)).shape[-1] == size, "thingsvision did not use the transform"
    maps = extractor.extract_features(batches=batches, module_names=layers, flatten_acts=False,
                                      output_type="ndarray")
    nbytes = 0
    for name, a in maps.items():
        pooled = a.mean(axis=(2, 3)) if a.ndim == 4 else a
        folder = out / name
        save_features(pooled.astype(np.float32), out_path=str(folder), file_format="hdf5")
        nbytes += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(json.dumps({"seconds": time.perf_counter() - t, "bytes": nbytes, "n": len(dataset),
                      "maxrss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb():
    """Own peak RSS; ru_maxrss would carry the parent's peak across fork + exec."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main(*sys.argv[1:])
