"""Mutants of the Chapter 5 training-loop exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch05_pretraining/solutions/exercise_training.ipynb"

_STEP = '''
def training_step(model, optimizer, get_batch, lr, grad_accum_steps=1, grad_clip=1.0):
    for group in optimizer.param_groups:
        group["lr"] = LR
    total = 0.0
    for _ in range(grad_accum_steps):
        x, y = get_batch()
        loss = cross_entropy_loss(model(x), y)
        BACKWARD
        total += loss.item()
    max_norm = grad_clip if grad_clip is not None else float("inf")
    STEP_AND_CLIP
    ZERO
    return total / grad_accum_steps, float(norm)
'''
_OK = dict(LR="lr", BACKWARD="(loss / grad_accum_steps).backward()",
           STEP_AND_CLIP="norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n    optimizer.step()",
           ZERO="optimizer.zero_grad(set_to_none=True)")


def _step(**changes):
    src = _STEP
    for key, value in {**_OK, **changes}.items():
        src = src.replace(key, value)
    return src


_EVAL = '''
def evaluate(model, get_batch, eval_iters):
    was_training = model.training
    EVAL
    total = 0.0
    with torch.no_grad():
        for _ in range(eval_iters):
            x, y = get_batch()
            total += cross_entropy_loss(model(x), y).item()
    RESTORE
    return total / eval_iters
'''

MUTANTS = {
    "loss not divided by the accumulation steps": dict(expect="divide each micro-batch loss", code=_step(
        BACKWARD="loss.backward()")),
    "gradients never cleared": dict(expect="never cleared", code=_step(ZERO="pass")),
    "clipping after optimizer.step()": dict(expect="clip before stepping", code=_step(
        STEP_AND_CLIP="optimizer.step()\n    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)")),
    "returns the norm after clipping": dict(expect="return the norm *before* clipping", code=_step(
        STEP_AND_CLIP="torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
                      "    norm = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()\n"
                      "    optimizer.step()")),
    "the learning rate is never set": dict(expect="check the schedule", code=_step(LR='group["lr"]')),
    "warmup off by one": dict(expect="warmup is max_lr*(step+1)/warmup_steps", code='''
def lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * ratio))
'''),
    "evaluation left in train mode (dropout on)": dict(expect="in eval mode", code=_EVAL.replace(
        "EVAL", "pass").replace("RESTORE", "model.train(was_training)")),
    "evaluation does not restore train mode": dict(expect="back in train mode", code=_EVAL.replace(
        "EVAL", "model.eval()").replace("RESTORE", "pass")),
    "no evaluation at the last step": dict(expect="and the last", code='''
def train_loop(model, optimizer, get_batch, *, max_steps, max_lr, warmup_steps, min_lr, grad_accum_steps=1,
               grad_clip=1.0, eval_interval=0, eval_batch=None, eval_iters=1):
    history = {"loss": [], "grad_norm": [], "val": []}
    model.train()
    for step in range(max_steps):
        lr = lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr)
        loss, norm = training_step(model, optimizer, get_batch, lr, grad_accum_steps, grad_clip)
        history["loss"].append(loss)
        history["grad_norm"].append(norm)
        if eval_interval and step % eval_interval == 0:
            history["val"].append((step, evaluate(model, eval_batch, eval_iters)))
    return history
'''),
}

ALTERNATIVES = {
    "zero_grad at the start of the step (Raschka style)": '''
def training_step(model, optimizer, get_batch, lr, grad_accum_steps=1, grad_clip=1.0):
    optimizer.zero_grad()
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for _ in range(grad_accum_steps):
        x, y = get_batch()
        loss = cross_entropy_loss(model(x), y) / grad_accum_steps
        loss.backward()
        losses.append(loss.item() * grad_accum_steps)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return sum(losses) / len(losses), norm.item()
''',
    "hand-written clipping and a (1 + cos) / 2 schedule": '''
def lr_schedule(step, max_lr, warmup_steps, max_steps, min_lr):
    if step >= max_steps:
        return min_lr
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2

def training_step(model, optimizer, get_batch, lr, grad_accum_steps=1, grad_clip=1.0):
    for group in optimizer.param_groups:
        group["lr"] = lr
    mean_loss = 0.0
    for _ in range(grad_accum_steps):
        x, y = get_batch()
        loss = cross_entropy_loss(model(x), y)
        (loss / grad_accum_steps).backward()
        mean_loss += loss.item() / grad_accum_steps
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if grad_clip is not None:
        coef = torch.clamp(grad_clip / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef)
    optimizer.step()
    for p in model.parameters():
        p.grad = None
    return mean_loss, float(norm)
''',
}
