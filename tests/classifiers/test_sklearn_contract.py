"""scikit-learn's own estimator checks for the project's estimators (they must pass, none marked away)."""
from sklearn.utils.estimator_checks import parametrize_with_checks

from transferlab.classifiers.fast_logreg import BatchedLogisticRegressionCV, TorchLogisticRegression
from transferlab.classifiers.fast_svm import TorchLinearSVC
from transferlab.classifiers.preprocessing import ShrunkStandardScaler
from transferlab.classifiers.ridge import RidgeProbe


@parametrize_with_checks([TorchLogisticRegression(), BatchedLogisticRegressionCV(Cs=[0.01, 1.0, 100.0]), RidgeProbe(),
                          TorchLinearSVC(), ShrunkStandardScaler()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
