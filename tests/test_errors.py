"""SemisegInputError survives the trip from a worker process (a pool pretrains the DDPM in one)."""

import pickle

from semiseg.errors import SemisegInputError


def test_input_error_pickles_with_its_path_and_problem():
    for err in (SemisegInputError("/data/x.nii.gz", "is not an image"), SemisegInputError(None, "--workers must be at least 1")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is SemisegInputError and str(back) == str(err)
        assert (back.path, back.problem) == (err.path, err.problem)
