"""Blocks as *applications* (one per depth) for models whose stack loop the runner cannot patch per module.

The runner patches each entry of a family's block list by setting its ``forward``. That needs one
module per depth whose call returns the hidden states. Two encoders break it:

- ALBERT applies one layer's weights at every depth: patching the module would patch every depth
  with the same index (and save the first patch as the "original" of the next).
- MPNet's blocks return tuples and take a relative position bias the encoder computes once.

For them the family lists :class:`Application` proxies, one per call at one depth. Setting the first
proxy's ``forward`` (what ``patch`` does) installs, as an instance attribute of the module that owns
the loop, a forward that calls the proxies in order; deleting the last one (``unpatch``) removes it,
so the model is restored bit for bit. The real blocks are never given an instance ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

# owner forward, called as loop(applications, *args, **kwargs) in place of the owner's class forward
Loop = Callable[..., Any]


class Application(nn.Module):
    """One call of ``block`` at one depth. Unpatched, it runs the block and returns its hidden states."""

    def __init__(self, block: nn.Module, depth: int, stack: Applications) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a child: the proxy owns no weights
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "_stack", stack)

    def forward(self, x: Tensor, mask: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        out = self.block(x, mask, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "forward":
            object.__setattr__(self, name, value)
            self._stack.changed()
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name == "forward":
            object.__delattr__(self, name)
            self._stack.changed()
        else:
            super().__delattr__(name)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, block={type(self.block).__name__}"


class Applications(nn.ModuleList):
    """The applications of a stack, in call order, and the loop installed on ``owner`` while patched.

    Subclasses may name another owner method for the loop to stand in for (``entry``: timm's EVA runs its
    blocks in ``forward_features``) and another proxy class (``application``: how an unpatched proxy calls
    its block)."""

    entry = "forward"
    application: type[Application] = Application

    def __init__(self, owner: nn.Module, blocks: list[nn.Module], loop: Loop) -> None:
        super().__init__()
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "loop", loop)
        for depth, block in enumerate(blocks):
            self.append(self.application(block, depth, self))

    def __getitem__(self, idx: int | slice) -> nn.Module:
        """A slice is a plain ModuleList of the same proxies (the loop belongs to the whole stack)."""
        if isinstance(idx, slice):
            return nn.ModuleList(list(self._modules.values())[idx])
        return super().__getitem__(idx)

    def changed(self) -> None:
        """Install the loop when the first application is patched, remove it when the last is unpatched."""
        patched = any("forward" in app.__dict__ for app in self)
        installed = self.entry in self.owner.__dict__
        if patched and not installed:
            setattr(self.owner, self.entry, lambda *args, **kwargs: self.loop(self, *args, **kwargs))
        elif not patched and installed:
            delattr(self.owner, self.entry)
