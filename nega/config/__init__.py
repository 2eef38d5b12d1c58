"""The recipe: its schema (`schema`: the common sections), the method table (`registry`: each method's
section, run, paper and tags, by dotted path) and the loader (`loader`: YAML, overrides, validation
with every problem at once). The public names are re-exported here: `from nega.config import
load_recipe, Recipe`.

A test or tool that swaps the method table patches `nega.config.registry.METHODS`, which every reader
looks up when it runs.
"""

from nega.config.loader import (
    RECIPES_DIR,
    RecipeError,
    RecipeFileError,
    apply_overrides,
    builtin_recipes,
    duplicate_keys,
    format_validation_errors,
    ignored_keys,
    load_recipe,
    parse_override,
    read_recipe_yaml,
    resolve_recipe_path,
    validate_recipe,
)
from nega.config.registry import METHODS, Method, Paper, import_object, recipe_adapter, recipe_class
from nega.config.schema import (
    BOOKKEEPING_FIELDS,
    CHECKPOINTING_MIN_PARAMS,
    TRACKER_PACKAGES,
    DataConfig,
    DataFormat,
    DeepSpeedConfig,
    EvalConfig,
    HarmEvalConfig,
    HubConfig,
    LoraConfig,
    ModelConfig,
    ReasoningEvalConfig,
    Recipe,
    RecipeBase,
    SamplingConfig,
    Strict,
    ToyConfig,
    TrainConfig,
    checkpointing_by_default,
    quantization_problem,
)

__all__ = [
    "BOOKKEEPING_FIELDS",
    "CHECKPOINTING_MIN_PARAMS",
    "METHODS",
    "RECIPES_DIR",
    "TRACKER_PACKAGES",
    "DataConfig",
    "DataFormat",
    "DeepSpeedConfig",
    "EvalConfig",
    "HarmEvalConfig",
    "HubConfig",
    "LoraConfig",
    "Method",
    "ModelConfig",
    "Paper",
    "ReasoningEvalConfig",
    "Recipe",
    "RecipeBase",
    "RecipeError",
    "RecipeFileError",
    "SamplingConfig",
    "Strict",
    "ToyConfig",
    "TrainConfig",
    "apply_overrides",
    "builtin_recipes",
    "checkpointing_by_default",
    "duplicate_keys",
    "format_validation_errors",
    "ignored_keys",
    "import_object",
    "load_recipe",
    "parse_override",
    "quantization_problem",
    "read_recipe_yaml",
    "recipe_adapter",
    "recipe_class",
    "resolve_recipe_path",
    "validate_recipe",
]
