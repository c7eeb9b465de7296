"""Mutants of the DPO exercise: realistic wrong solutions must fail a check that names the mistake;
alternative correct solutions must pass every check (see the mutant contract in tests/mutants/)."""

SOLUTION = "ch07_finetuning/solutions/exercise_dpo.ipynb"

_LOGPS = '''
def sequence_logprobs(model, ids, response_mask):
    logp = F.log_softmax(model(ids)[:, :-1], dim=-1)
    tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return {body}
'''

_LOSS = '''
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    {body}
'''

MUTANTS = {
    "reference model forgotten": dict(code=_LOSS.format(body='''
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()'''), expect="reference"),
    "log-probs averaged over all tokens": dict(code=_LOGPS.format(body="tok.mean(-1)"), expect="averaged over all tokens"),
    "log-probs averaged over the answer tokens": dict(
        code=_LOGPS.format(body="(tok * response_mask[:, 1:]).sum(-1) / response_mask[:, 1:].sum(-1)"),
        expect="not the mean"),
    "prompt tokens included": dict(code='''
def sequence_logprobs(model, ids, response_mask):
    logp = F.log_softmax(model(ids)[:, :-1], dim=-1)
    tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    started = response_mask.cumsum(1)[:, 1:] > 0          # "the real tokens": everything up to the end of the answer
    keep = (response_mask[:, 1:] > 0) | (started == 0)
    return (tok * keep.float()).sum(-1)
''', expect="prompt tokens are included"),
    "no shift between logits and targets": dict(code='''
def sequence_logprobs(model, ids, response_mask):
    logp = F.log_softmax(model(ids), dim=-1)
    return (logp.gather(-1, ids[..., None]).squeeze(-1) * response_mask.float()).sum(-1)
''', expect="no shift"),
    "sign flipped": dict(code=_LOSS.format(body='''
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(rejected_rewards - chosen_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()'''), expect="sign"),
    "beta outside the sigmoid": dict(code=_LOSS.format(body='''
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    loss = -beta * F.logsigmoid(margin).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()'''), expect="beta"),
    "beta divides instead of multiplying": dict(code=_LOSS.format(body='''
    chosen_rewards = (policy_chosen_logps - ref_chosen_logps) / beta
    rejected_rewards = (policy_rejected_logps - ref_rejected_logps) / beta
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()'''), expect="beta"),
}

ALTERNATIVES = {
    "softplus form of the loss": _LOSS.format(body='''
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    return F.softplus(rejected - chosen).mean(), chosen.detach(), rejected.detach()'''),
    "log(sigmoid) of the difference of log-ratio differences": _LOSS.format(body='''
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    loss = -torch.log(torch.sigmoid(beta * (pi_logratios - ref_logratios))).mean()
    return loss, (beta * (policy_chosen_logps - ref_chosen_logps)).detach(), (beta * (policy_rejected_logps - ref_rejected_logps)).detach()'''),
    "log-probs with cross_entropy and ignore_index": '''
def sequence_logprobs(model, ids, response_mask):
    logits = model(ids)[:, :-1]
    targets = ids[:, 1:].masked_fill(response_mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # [B, T-1]
    return -nll.sum(-1)
''',
    "log-probs with an explicit loop over positions": '''
def sequence_logprobs(model, ids, response_mask):
    logp = torch.log_softmax(model(ids), dim=-1)
    out = []
    for b in range(ids.size(0)):
        total = logp.new_zeros(())
        for t in range(1, ids.size(1)):
            if response_mask[b, t]:
                total = total + logp[b, t - 1, ids[b, t]]
        out.append(total)
    return torch.stack(out)
''',
}
