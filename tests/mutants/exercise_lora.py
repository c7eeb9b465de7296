"""Mutants of the Chapter 7 LoRA exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch07_finetuning/solutions/exercise_lora.ipynb"

_LAYER = '''
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.scaling = rank, SCALING
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        INIT

    def forward(self, x):
        return FORWARD

    def merged(self):
        MERGED
'''
_OK = dict(
    SCALING="alpha / rank",
    INIT="nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
    FORWARD="self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling",
    MERGED='''out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out''',
)


def _layer(**changes):
    src = _LAYER
    for key, value in {**_OK, **changes}.items():
        src = src.replace(key, value)
    return src


MUTANTS = {
    "scaling by alpha // rank": dict(expect="alpha // rank", code=_layer(SCALING="alpha // rank")),
    "scaling by rank / alpha": dict(expect="expected alpha / rank", code=_layer(SCALING="rank / alpha")),
    "merge adds into the base weight in place": dict(expect="in place", code=_layer(MERGED='''with torch.no_grad():
            self.base.weight += self.scaling * self.lora_B @ self.lora_A
        return self.base''')),
    "B random and A zero (swapped initialisation)": dict(expect="lora_B must start at zero", code=_layer(
        INIT="nn.init.zeros_(self.lora_A)\n        nn.init.normal_(self.lora_B)")),
    "merged layer drops the bias": dict(expect="is the bias kept", code=_layer(MERGED='''out = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        return out''')),
    "the update is not scaled in forward": dict(expect="alpha/rank scaling", code=_layer(
        FORWARD="self.base(x) + x @ self.lora_A.T @ self.lora_B.T")),
    "apply_lora leaves the rest of the model trainable": dict(expect="should be frozen", code='''
def apply_lora(model, rank, alpha, targets=TARGETS):
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]
    for n in names:
        _replace(model, n, LoRALinear(model.get_submodule(n), rank, alpha))
    return model
'''),
    "parameter formula forgets the MLP's 4C width": dict(expect="lora_param_count gives", code='''
def lora_param_count(d_model, n_layers, rank):
    C = d_model
    return n_layers * rank * ((C + 3 * C) + (C + C) + (C + C) + (C + C))
'''),
}

ALTERNATIVES = {
    "F.linear on the merged weight, merged() via deepcopy": '''
import copy
import torch.nn.functional as F

class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        base.weight.requires_grad = False
        if base.bias is not None:
            base.bias.requires_grad = False
        self.base = base
        self.scaling = float(alpha) / float(rank)
        self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(rank, base.in_features), a=math.sqrt(5)))
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))

    def delta(self):
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        return F.linear(x, self.base.weight + self.delta(), self.base.bias)

    def merged(self):
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight += self.delta()
        out.weight.requires_grad_(True)
        return out
''',
    "Gaussian A (the paper's init) and named_children recursion": '''
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / rank)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scaling * torch.matmul(torch.matmul(x, self.lora_A.t()), self.lora_B.t())

    def merged(self):
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        lin.load_state_dict({"weight": self.base.weight + self.scaling * self.lora_B.detach() @ self.lora_A.detach(),
                             **({"bias": self.base.bias} if self.base.bias is not None else {})})
        return lin

def apply_lora(model, rank, alpha, targets=TARGETS):
    model.requires_grad_(False)
    def visit(module, prefix):
        for name, child in list(module.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, nn.Linear) and any(full == t or full.endswith("." + t) for t in targets):
                setattr(module, name, LoRALinear(child, rank, alpha))
            else:
                visit(child, full)
    visit(model, "")
    return model
''',
}
