"""`record`/`field`: what the gate needs of dataclasses, without their import cost.

`dataclasses` pulls in `inspect` and friends: about 10 ms on every gate start, more than
the rest of a `tail -n 200`. Type checkers see the real `dataclass` (so signatures are
checked); at run time a few lines build `__init__`, `__eq__`, `__repr__` and `__hash__`.
"""

from __future__ import annotations

__all__ = ["field", "record"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field
else:
    _MISSING = object()

    class _Field:
        __slots__ = ("compare", "default", "factory")

        def __init__(self, default, factory, compare):
            self.default, self.factory, self.compare = default, factory, compare

    def field(*, default=_MISSING, default_factory=None, compare=True, repr=True):
        return _Field(default, default_factory, compare)

    def record(cls=None, /, *, frozen=False):
        def wrap(cls):
            names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (no inspect)
            specs = {}
            for name in names:
                value = cls.__dict__.get(name, _MISSING)
                if isinstance(value, _Field):
                    specs[name] = value
                    if value.default is _MISSING:
                        delattr(cls, name)
                    else:
                        setattr(cls, name, value.default)
                else:
                    specs[name] = _Field(value, None, True)
            compared = tuple(n for n in names if specs[n].compare)

            def __init__(self, *args, **kwargs):
                if len(args) > len(names):
                    raise TypeError(f"{cls.__name__}() takes {len(names)} arguments")
                for i, name in enumerate(names):
                    if i < len(args):
                        value = args[i]
                    elif name in kwargs:
                        value = kwargs.pop(name)
                    else:
                        spec = specs[name]
                        if spec.factory is not None:
                            value = spec.factory()
                        elif spec.default is not _MISSING:
                            value = spec.default
                        else:
                            raise TypeError(f"{cls.__name__}() missing argument {name!r}")
                    object.__setattr__(self, name, value)
                if kwargs:
                    raise TypeError(f"{cls.__name__}() got unexpected {sorted(kwargs)}")

            def __eq__(self, other):
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return all(getattr(self, n) == getattr(other, n) for n in compared)

            def __repr__(self):
                inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
                return f"{cls.__name__}({inner})"

            def __setattr__(self, name, value):
                raise AttributeError(f"cannot assign to field {name!r} of {cls.__name__}")

            cls.__init__ = __init__
            cls.__eq__ = __eq__
            cls.__repr__ = __repr__
            cls.__match_args__ = names
            cls.__record_fields__ = names
            if frozen:
                cls.__setattr__ = __setattr__
                cls.__hash__ = lambda self: hash(tuple(getattr(self, n) for n in compared))
            else:
                cls.__hash__ = None
            return cls

        return wrap if cls is None else wrap(cls)
