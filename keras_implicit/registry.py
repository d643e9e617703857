"""String identifiers and (de)serialization for solvers, backward modes and proximal activations.

Works like `keras.activations.get`: an instance passes through, a string
names a registered class built with its defaults, a dict is a serialized
config `{"class_name": ..., "config": {...}}`.
"""


class Configurable:
    """A plain Python object described by its config: equality, hashing and repr
    follow `get_config()`, and `from_config` rebuilds it (solvers, backward
    modes, proximal activations)."""

    name = None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Registry:
    """Classes of one kind (subclasses of `base`) by name; a module exposes
    `get, serialize, deserialize, register = Registry(...).functions()`."""

    def __init__(self, kind, base, classes=()):
        self.kind = kind
        self.base = base
        self._classes = {}
        for cls in classes:
            self.register(cls)

    def functions(self):
        return self.get, self.serialize, self.deserialize, self.register

    def register(self, cls):
        """Registers a class under its `name` (and its class name)."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(
                f"Only subclasses of {self.base.__name__} can be registered as a "
                f"{self.kind}. Received: {cls!r}"
            )
        if not cls.name:
            raise ValueError(f"A {self.kind} class needs a string `name`. Received: {cls!r}")
        self._classes[cls.name] = cls
        self._classes[cls.__name__] = cls
        return cls

    def names(self):
        return sorted(k for k, c in self._classes.items() if k == c.name)

    def get(self, identifier):
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, str):
            cls = self._classes.get(identifier)
            if cls is None:
                raise ValueError(
                    f"Unknown {self.kind} {identifier!r}; expected one of "
                    f"{self.names()} or a {self.base.__name__} instance. "
                    f"Received: {self.kind}={identifier!r}"
                )
            return cls()
        if isinstance(identifier, dict):
            return self.deserialize(identifier)
        raise ValueError(
            f"Could not interpret {self.kind} identifier; expected a string in "
            f"{self.names()}, a config dict or a {self.base.__name__} instance. "
            f"Received: {self.kind}={identifier!r}"
        )

    def serialize(self, obj):
        obj = self.get(obj)
        return {"class_name": obj.name, "config": obj.get_config()}

    def deserialize(self, config):
        if not isinstance(config, dict) or "class_name" not in config:
            raise ValueError(
                f"A serialized {self.kind} is a dict with 'class_name' and 'config'. "
                f"Received: {config!r}"
            )
        cls = self._classes.get(config["class_name"])
        if cls is None:
            raise ValueError(
                f"Unknown {self.kind} {config['class_name']!r}; expected one of "
                f"{self.names()}. Received: {config!r}"
            )
        return cls.from_config(config.get("config", {}))
