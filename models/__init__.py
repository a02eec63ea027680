"""The model zoo. Importing this package registers every model family."""

from models import cnn, dscnn, mobilenet, resnet, vgg, vit  # noqa: F401  (registers)
from models._registry import (
    create_from_spec,
    create_model,
    example_input,
    get_model_entry,
    list_models,
    load_state,
    register_model,
)

__all__ = [
    "create_from_spec",
    "create_model",
    "example_input",
    "get_model_entry",
    "list_models",
    "load_state",
    "register_model",
]
