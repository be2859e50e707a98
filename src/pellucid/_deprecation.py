"""Renamed keywords: the old name keeps working for one release, with a warning.

``renamed(old="new")`` wraps a public function so that ``fn(..., old=value)`` calls
``fn(..., new=value)`` and emits a :class:`~pellucid._warnings.PellucidDeprecationWarning`
naming both. The wrapped function keeps its signature (``inspect.signature`` shows only the
new names), so the vocabulary test and the documentation see the current vocabulary.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from pellucid._state import _user_stacklevel
from pellucid._warnings import PellucidDeprecationWarning

__all__ = ["renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: accept each ``old`` keyword as a deprecated alias of ``new``.

    Example:
        >>> import warnings
        >>> @renamed(scale="noise")
        ... def f(*, noise=1.0):
        ...     return noise
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     f(scale=2.0), caught[0].category.__name__
        (2.0, 'PellucidDeprecationWarning')
    """

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"`{old}` is the old name of `{new}`; pass only `{new}=`.")
                    warnings.warn(
                        f"`{old}=` is renamed `{new}=` in {fn.__name__}; the old name will be "
                        "removed in the next release.",
                        PellucidDeprecationWarning,
                        stacklevel=_user_stacklevel(),
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.renamed_keywords = dict(old_to_new)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator
