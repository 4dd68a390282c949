"""Registers ``model_type="finecaption"`` with transformers' Auto classes without importing our model code.

``import finecaption_plugin`` calls ``register()``. Registering with the public ``Auto*.register`` would
import transformers' four Auto modules and our classes, and with them torch and torchvision's model zoo
(through the image utilities): about 4 s of CPU that ``finecaption --help``, lmms-eval's plugin scan and
every script would pay whether or not it loads a model. Instead, when each Auto module is first imported
(at once for one already imported), FineCaption's entries go into its mapping's ``_extra_content`` (the
table ``Auto*.register`` writes) as names, resolved to classes the first time transformers reads them:

| transformers module                   | mapping (Auto class)                                               |
|---------------------------------------|--------------------------------------------------------------------|
| ``models.auto.configuration_auto``    | ``CONFIG_MAPPING`` (``AutoConfig``): ``FineCaptionConfig``         |
| ``models.auto.modeling_auto``         | ``AutoModel``, ``AutoModelForImageTextToText``, ``AutoModelForCausalLM`` |
| ``models.auto.image_processing_auto`` | ``AutoImageProcessor``, both backend names                         |
| ``models.auto.processing_auto``       | ``AutoProcessor``                                                  |

Nothing is imported at registration time, which matters: transformers imports its Auto modules from
inside its own configuration and modeling modules, where importing ours (which need those whole) fails.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType

MODEL_TYPE = "finecaption"
_CONFIG = ("finecaption_plugin.configuration_finecaption", "FineCaptionConfig")
# Auto class (its mapping attribute in modeling_auto) -> the model class registered for FineCaption.
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "MODEL_MAPPING": ("finecaption_plugin.modeling_finecaption", "FineCaptionModel"),
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING": (
        "finecaption_plugin.modeling_finecaption",
        "FineCaptionForConditionalGeneration",
    ),
    "MODEL_FOR_CAUSAL_LM_MAPPING": ("finecaption_plugin.modeling_finecaption", "FineCaptionForConditionalGeneration"),
}


def _load(module: str, name: str):
    return getattr(importlib.import_module(module), name)


class _LazyClass:
    """A class named by module and attribute, imported when an Auto mapping first hands it out."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def resolve(self):
        return _load(self.module, self.name)

    def names(self, key: object) -> bool:
        """Whether ``key`` is this class (compared by name: the class exists only once its module is loaded)."""
        return getattr(key, "__module__", None) == self.module and getattr(key, "__qualname__", None) == self.name

    def __repr__(self) -> str:
        return f"<lazy {self.module}.{self.name}>"


def _resolved(value):
    if isinstance(value, _LazyClass):
        return value.resolve()
    if isinstance(value, dict) and any(isinstance(item, _LazyClass) for item in value.values()):
        return {key: _resolved(item) for key, item in value.items()}
    return value


class _LazyEntries(dict):
    """An Auto mapping's ``_extra_content`` whose keys and values may be ``_LazyClass``, resolved when read."""

    def _resolve_keys(self, wanted: object = None) -> None:
        for key in [key for key in dict.keys(self) if isinstance(key, _LazyClass)]:
            if wanted is None or key.names(wanted):
                dict.__setitem__(self, key.resolve(), dict.pop(self, key))

    def __contains__(self, key) -> bool:
        self._resolve_keys(key)
        return dict.__contains__(self, key)

    def __getitem__(self, key):
        self._resolve_keys(key)
        value = dict.__getitem__(self, key)
        resolved = _resolved(value)
        if resolved is not value:
            dict.__setitem__(self, key, resolved)
        return resolved

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __iter__(self):
        self._resolve_keys()
        return iter(list(dict.keys(self)))

    def keys(self):
        self._resolve_keys()
        return list(dict.keys(self))

    def values(self):
        return [self[key] for key in self.keys()]

    def items(self):
        return [(key, self[key]) for key in self.keys()]


def _entries(mapping) -> _LazyEntries:
    if not isinstance(mapping._extra_content, _LazyEntries):
        mapping._extra_content = _LazyEntries(mapping._extra_content)
    return mapping._extra_content


_CONFIG_CLASS = _LazyClass(*_CONFIG)


def _register_config(auto: ModuleType) -> None:
    _entries(auto.CONFIG_MAPPING)[MODEL_TYPE] = _CONFIG_CLASS


def _register_models(auto: ModuleType) -> None:
    for mapping_name, model_class in MODEL_CLASSES.items():
        _entries(getattr(auto, mapping_name))[_CONFIG_CLASS] = _LazyClass(*model_class)


def _register_image_processor(auto: ModuleType) -> None:
    # One NumPy/PIL implementation serves both backend names: AutoImageProcessor asks for "torchvision" by
    # default and, finding only "pil", would warn about a fallback on every load.
    processor = _LazyClass("finecaption_plugin.image_processing_finecaption", "FineCaptionImageProcessor")
    _entries(auto.IMAGE_PROCESSOR_MAPPING)[_CONFIG_CLASS] = {"torchvision": processor, "pil": processor}


def _register_processor(auto: ModuleType) -> None:
    processor = _LazyClass("finecaption_plugin.processing_finecaption", "FineCaptionProcessor")
    _entries(auto.PROCESSOR_MAPPING)[_CONFIG_CLASS] = processor


REGISTRATIONS: dict[str, Callable[[ModuleType], None]] = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.image_processing_auto": _register_image_processor,
    "transformers.models.auto.processing_auto": _register_processor,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``REGISTRATIONS[name]`` right after transformers' module ``name`` has executed; then leaves."""

    def __init__(self, pending: dict[str, Callable[[ModuleType], None]]) -> None:
        self.pending = pending

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader_exec = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            loader_exec(module)
            registration = self.pending.pop(fullname, None)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
            if registration is not None:
                registration(module)

        spec.loader.exec_module = exec_module  # the loader is this spec's own instance
        return spec


def register() -> None:
    """Register FineCaption with every Auto module now loaded, and with the others as they load. Idempotent."""
    if any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        return
    pending = {}
    for name, registration in REGISTRATIONS.items():
        module = sys.modules.get(name)
        if module is None:
            pending[name] = registration
        else:
            registration(module)
    if pending:
        sys.meta_path.insert(0, _AfterImport(pending))
