"""Task-batched natural-gradient machinery shared by the trust-region solvers.

Everything works on ``[N, P]`` flat per-task vectors. Because each task's loss depends only on its own
parameter slice, the gradient of the *sum* of per-task losses is the stack of per-task gradients and
the Hessian-vector product of the summed KL is block diagonal, so one autograd call serves all tasks.

- Fisher-vector product: F v = d/dtheta ( (d KL / dtheta) . v ) + damping * v  (Schulman et al. 2015, App. C).
  Solvers get theirs from `InnerSolver.fisher_product`, which uses the equal closed Gauss-Newton form for a
  Gaussian MLP actor outside a differentiable step, and this double backward otherwise.
- Conjugate gradient solves F x = g for every task at once (per-task alpha and beta).
- Backtracking line search accepts, per task, the largest fraction of the step whose KL <= delta and
  whose surrogate improves.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from safemeta.rollout.params import Params, add, detach, flat, select, unflat


def flat_grad(value: Tensor, params: Params, create_graph: bool = False, retain_graph: bool | None = None) -> Tensor:
    grads = torch.autograd.grad(value, list(params.values()), create_graph=create_graph, retain_graph=retain_graph,
                                allow_unused=True)
    return flat({k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(params.items(), grads)})


def fisher_vector_product(kl_fn: Callable[[Params], Tensor], params: Params, damping: float,
                          create_graph: bool = False) -> Callable[[Tensor], Tensor]:
    """``v[N,P] -> F v`` with F the Hessian in q of the per-task mean KL ``kl_fn(q)`` at q = ``params``.

    With ``create_graph`` the products keep their graph to ``params`` (F depends on theta), for
    differentiating through a natural-gradient step: q is then a copy of ``params`` inside the graph,
    so the Hessian is taken in q alone while ``kl_fn`` may keep its reference policy attached to
    ``params`` (F(phi) = d^2/dq^2 KL(pi_phi || pi_q) at q = phi depends on phi through both).
    """
    p = {k: v.clone() for k, v in params.items()} if create_graph else \
        {k: v.detach().requires_grad_(True) for k, v in params.items()}
    grad_kl = flat_grad(kl_fn(p).sum(), p, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        # v^T d(grad KL)/dp = F v, differentiating grad KL only: v's own history (CG iterates that depend on
        # theta) is not traversed, and with create_graph the product stays differentiable in v and in p.
        hv = torch.autograd.grad(grad_kl, list(p.values()), grad_outputs=v, create_graph=create_graph,
                                 retain_graph=True, allow_unused=True)
        return flat({k: (h if h is not None else torch.zeros_like(x)) for (k, x), h in zip(p.items(), hv)}) + damping * v

    return fvp


def conjugate_gradient(avp: Callable[[Tensor], Tensor], b: Tensor, iters: int, rtol: float = 1e-10) -> Tensor:
    """Solve A x = b for every row of ``b[N,P]`` (A symmetric positive definite per task), stopping a row
    once its residual norm is below ``rtol`` times ||b|| (or after ``iters`` iterations)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = (r * r).sum(-1)
    tiny = torch.finfo(b.dtype).tiny
    tol = (rtol**2 * rr).detach().clamp(min=tiny)
    for _ in range(iters):
        if bool((rr < tol).all()):
            break
        ap = avp(p)
        alpha = rr / (p * ap).sum(-1).clamp(min=tiny)
        alpha = torch.where(rr < tol, torch.zeros_like(alpha), alpha)
        x = x + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * ap
        rr_new = (r * r).sum(-1)
        p = r + (rr_new / rr.clamp(min=tiny)).unsqueeze(-1) * p
        rr = rr_new
    return x


FvpMaker = Callable[[Params, bool], Callable[[Tensor], Tensor]]


class _ImplicitSolve(torch.autograd.Function):
    """x = H(phi)^-1 r by conjugate gradient, differentiated implicitly: with x_bar the incoming cotangent
    and lambda = H^-1 x_bar (one more CG), r_bar = lambda and phi_bar = -d/dphi (lambda^T H(phi) x), from
    H x = r  =>  dx = H^-1 (dr - dH x). No graph is kept through the CG iterations."""

    @staticmethod
    def forward(ctx, make_fvp: FvpMaker, names: tuple[str, ...], iters: int, rhs: Tensor, *params: Tensor) -> Tensor:
        with torch.enable_grad():  # the products themselves use autograd (forward runs in no-grad mode)
            fvp = make_fvp({k: v.detach() for k, v in zip(names, params)}, False)
            x = conjugate_gradient(fvp, rhs.detach(), iters).detach()
        ctx.make_fvp, ctx.names, ctx.iters = make_fvp, names, iters
        ctx.save_for_backward(x, *params)
        return x

    @staticmethod
    def backward(ctx, x_bar: Tensor):
        x, *params = ctx.saved_tensors
        with torch.enable_grad():
            lam = conjugate_gradient(ctx.make_fvp({k: v.detach() for k, v in zip(ctx.names, params)}, False),
                                     x_bar, ctx.iters)
            p = {k: v.detach().requires_grad_(True) for k, v in zip(ctx.names, params)}
            bilinear = (lam.detach() * ctx.make_fvp(p, True)(x.detach())).sum()
            grads = torch.autograd.grad(-bilinear, list(p.values()), allow_unused=True)
        return (None, None, None, lam, *grads)


def implicit_solve(make_fvp: FvpMaker, params: Params, rhs: Tensor, iters: int) -> Tensor:
    """``H(params)^-1 rhs`` for every task, differentiable in ``rhs`` and ``params`` by the implicit function
    theorem (exact for a converged solve). ``make_fvp(params, create_graph)`` returns ``v -> H v``."""
    return _ImplicitSolve.apply(make_fvp, tuple(params), iters, rhs, *params.values())


def backtracking_line_search(params: Params, full_step: Tensor, accept: Callable[[Params], Tensor],
                             decay: float, max_backtracks: int) -> tuple[Params, Tensor, Tensor]:
    """Per task, take the first ``decay**j * full_step`` that ``accept`` (-> [N] bool) allows.

    Returns new params, the accepted fraction per task (0 where nothing was accepted, params kept) and
    the accepted mask.
    """
    start = detach(params)
    n = full_step.shape[0]
    accepted = torch.zeros(n, dtype=torch.bool, device=full_step.device)
    fraction = torch.zeros(n, device=full_step.device)
    new = start
    for j in range(max_backtracks):
        frac = decay**j
        cand = add(start, unflat(full_step, start), frac)
        with torch.no_grad():
            ok = accept(cand) & ~accepted
        new = select(new, ok, cand)
        fraction = torch.where(ok, torch.full_like(fraction, frac), fraction)
        accepted |= ok
        if bool(accepted.all()):
            break
    return new, fraction, accepted
