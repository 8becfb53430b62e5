"""The one place that owns every geometric convention of hpe_bench (see docs/conventions.md).

Frames, rotation representations, Euler rules, projection, crop intrinsics and the label transforms under an
image map (``labels.py``) are defined here and nowhere else; other modules call these functions instead of re-deriving them.
"""
from .camera import *  # noqa: F401,F403
from .euler import *  # noqa: F401,F403
from .frames import *  # noqa: F401,F403
from .rotations import *  # noqa: F401,F403
from .euler import wrap_degrees  # noqa: F401
from .mirror import *  # noqa: F401,F403
from .external import *  # noqa: F401,F403
from .labels import *  # noqa: F401,F403
from .reference_code import *  # noqa: F401,F403
