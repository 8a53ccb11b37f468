"""Sweeps: search spaces, the Tuner, the two-stage MLEM pipeline, TensorBoard, the report.

Called, this package is the API's `mlem_ray.sweep(out, data=..., space=..., ...)` (mlem_ray/api.py).
"""
import sys
import types


class _CallableModule(types.ModuleType):
    # `mlem_ray.sweep` names this package as soon as any of its modules is imported (Python binds
    # a subpackage to its parent's attribute), so the API's sweep() could not keep the name; the
    # package itself answers the call instead.
    def __call__(self, *args, **kwargs):
        from ..api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
