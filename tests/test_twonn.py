"""TwoNN intrinsic dimension (Facco et al. 2017) on data of known dimension, with and without
many coinciding points (sequences of one or two events embed to the same vector)."""
import numpy as np
import pytest

from mlem_ray.evaluation.quality import intrinsic_dimension


@pytest.mark.parametrize("dim", [1, 3])
def test_known_dimension_inside_a_larger_space(dim):
    rng = np.random.default_rng(dim)
    basis, _ = np.linalg.qr(rng.normal(size=(12, dim)))
    x = rng.random(size=(2000, dim)) @ basis.T
    assert intrinsic_dimension(x) == pytest.approx(dim, rel=0.15)


def test_duplicates_do_not_change_the_estimate():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(8, 2)))
    plane = rng.random(size=(1500, 2)) @ basis.T
    clean = intrinsic_dimension(plane)
    # Half the rows repeated 1-4 times, and a third of the data one single point (the embedding
    # that every one-event sequence gets).
    copies = np.repeat(plane, rng.integers(1, 5, size=len(plane)), axis=0)
    crowded = np.vstack([copies, np.repeat(plane[:1], len(copies) // 2, axis=0)])
    assert clean == pytest.approx(2.0, rel=0.15)
    assert intrinsic_dimension(crowded) == pytest.approx(clean, rel=1e-9)


def test_too_few_distinct_points_is_an_error():
    with pytest.raises(ValueError, match="3 distinct points"):
        intrinsic_dimension(np.repeat([[0.0, 1.0], [1.0, 0.0]], 50, axis=0))
