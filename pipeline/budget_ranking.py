"""How a critic's budget input ranks the inference budgets, from any code's actions and critic.

Plain Python and numpy, so the authors' JAX code is measured by the same lines as ours:
pipeline/diagnostics.py applies it to our agent, bench/reference_budget_ranking.py to theirs.
"""

import numpy as np


def rank_budgets(budgets, q) -> dict:
    """The four measurements, keyed by str(k) (for JSON), for ascending powers of two `budgets`:

      q_mean_at_own_k[k]             mean Q(s, a_k, k)
      q_mean_of_a1_at_k[k]           mean Q(s, a_1, k): one action, the budget input alone moving Q
      doubled_wins_across_levels[k]  fraction of states with Q(s, a_2k, 2k) > Q(s, a_k, k)
      doubled_wins_same_level[k]     fraction with Q(s, a_2k, K) > Q(s, a_k, K), K = the largest budget

    q(action_k, input_k) -> Q [B] of the action sampled with action_k Euler steps, scored at critic input
    input_k; each pair is evaluated once.
    """
    budgets = sorted(int(k) for k in budgets)
    cache = {}

    def value(action_k, input_k):
        if (action_k, input_k) not in cache:
            cache[(action_k, input_k)] = np.asarray(q(action_k, input_k), np.float64)
        return cache[(action_k, input_k)]

    first, cap = budgets[0], budgets[-1]
    pairs = list(zip(budgets[:-1], budgets[1:]))
    return dict(
        q_mean_at_own_k={str(k): float(value(k, k).mean()) for k in budgets},
        q_mean_of_a1_at_k={str(k): float(value(first, k).mean()) for k in budgets},
        doubled_wins_across_levels={str(k): float((value(k2, k2) > value(k, k)).mean()) for k, k2 in pairs},
        doubled_wins_same_level={str(k): float((value(k2, cap) > value(k, cap)).mean()) for k, k2 in pairs},
    )
