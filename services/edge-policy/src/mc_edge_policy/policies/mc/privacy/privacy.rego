# Privacy budgets: a per-tenant budget that refills at a leak rate; spending past it is denied.
package mc.privacy

import rego.v1

privacy := object.get(input, ["tenant", "privacy"], {})

# The budget left now: what remained at the last update plus the leak since, capped at the total.
# (Not min(): rego-cpp 1.5.2's min([10, 3]) is 10.)
remaining := refilled if refilled < total
else := total

total := object.get(privacy, "budget_total", 0)

refilled := object.get(privacy, "budget_remaining", 0) + (object.get(privacy, "leak_per_hour", 0) * object.get(privacy, "hours_since_update", 0))

cost := object.get(input, ["request", "privacy_cost"], 0)

# METADATA
# title: No privacy budget left
# custom:
#   id: privacy.budget_exceeded
#   remediation: Wait for the privacy budget to refill, or ask the data owner to raise the tenant's budget.
deny contains {"rule": "privacy.budget_exceeded", "reason": "privacy_budget_exceeded"} if {
	remaining <= 0
}

# METADATA
# title: The request costs more than the budget left
# custom:
#   id: privacy.budget_insufficient
#   remediation: Narrow the query (fewer columns or rows) so that it costs less than the budget left.
deny contains {"rule": "privacy.budget_insufficient", "reason": "privacy_budget_insufficient", "remaining": remaining} if {
	remaining > 0
	cost > remaining
}
