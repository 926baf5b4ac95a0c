"""Whether a forward runs eagerly or is being recorded (``torch.compile``, fx, TorchScript, jit tracing).

StRA's eager training paths (replays, recomputation, in-place writes into results) pay off
only when autograd records a graph eagerly; a compiler decides for itself what to keep and
may mis-trace some of those tricks, so they ask here first.

Under torch.fx the input checks and the hand-written operators are leaves, called as they are: timm's
tracer takes them from ``register_notrace_function``; plain ``torch.fx.symbolic_trace`` and torchvision's
feature extraction from the ``torch.fx.wrap`` calls in the modules that call them (``wrap`` patches a name
in its caller's module while tracing). The diversity recorder records a call of itself for any tracer
(``DiversityRecorder``), so a traced model keeps its term.
"""
import torch
from torch.autograd import forward_ad
from torch.fx import _symbolic_trace
from torch.utils._python_dispatch import _get_current_dispatch_mode

# symbolic tracing only (torch.fx's is_fx_tracing is also true under export)
is_fx_symbolic_tracing = _symbolic_trace.is_fx_symbolic_tracing

# whether torch.compile (dynamo) is tracing this code
is_compiling = torch.compiler.is_compiling


@torch.jit.unused  # TorchScript never gets here (callers test torch.jit.is_scripting() first)
def running_eagerly() -> bool:
    """Whether a forward runs op by op: not recorded by ``torch.compile``, fx or jit tracing (a Triton launch or
    a hand-written backward is invisible to them)."""
    return not is_compiling() and not torch.jit.is_tracing() and not is_fx_symbolic_tracing()


@torch.jit.unused  # TorchScript never gets here (callers test torch.jit.is_scripting() first)
def eager_autograd(x: torch.Tensor) -> bool:
    """Whether a forward on ``x`` is building an eager autograd graph that a hand-written backward may join: the
    case where replaying saves memory.

    Under ``torch.compile`` the compiler decides what to keep; under fx, TorchScript or jit tracing
    the graph is being recorded, not run; under functorch transforms, forward-mode AD or a dispatch
    mode (``plain_tensor``) the hand-written backward passes, which have no rules for them, stand aside.
    """
    return torch.is_grad_enabled() and running_eagerly() and plain_tensor(x)


@torch.jit.unused
def plain_tensor(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain tensor that nothing else sees ops on: not a subclass (fake, distributed), not
    wrapped by functorch (vmap, grad) nor under a functorch transform of other tensors, no dispatch mode active
    and no forward-mode AD level open. A kernel
    launched on its memory would bypass all of those."""
    if type(x) is not torch.Tensor or _get_current_dispatch_mode() is not None:
        return False
    if forward_ad._current_level >= 0:
        return False
    # a transform over the parameters alone (torch.func.grad / vmap of functional_call) leaves x unwrapped
    return not (torch._C._functorch.is_functorch_wrapped_tensor(x) or torch._C._are_functorch_transforms_active())
