"""What gin may bind, declared by each module next to its definition, without gin.

    @registry.configurable
    class SoftPrompt(nn.Module): ...

    registry.configurable(sampled_vocab, module="prompt_init")
    registry.constant("PROMPT_TUNING_RULES", PROMPT_TUNING_RULES)

Library modules stay importable and testable without gin (T5X's habit); the
command-line edge (`prompt_tuning.cli.gin`) imports the library and hands
everything declared here to gin.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

# (object, gin name, gin module or None), in declaration order.
CONFIGURABLES: list[tuple[Any, str, Optional[str]]] = []
CONSTANTS: dict[str, Any] = {}


def configurable(obj: Optional[T] = None, *, name: Optional[str] = None,
                 module: Optional[str] = None) -> Any:
  """Marks a class or function as bindable from gin; usable as a decorator."""
  def mark(target: T) -> T:
    CONFIGURABLES.append((target, name or target.__name__, module))
    return target
  return mark if obj is None else mark(obj)


def constant(name: str, value: Any) -> None:
  """A gin constant (`%NAME` in gin files)."""
  CONSTANTS[name] = value
