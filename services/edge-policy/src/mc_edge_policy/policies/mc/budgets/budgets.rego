# Progressive throttling: the higher a tenant's error-budget burn rate, the harder the throttle.
package mc.budgets

import rego.v1

burn_rate := object.get(input, ["tenant", "burnRate"], 0)

# METADATA
# title: Throttle level for the tenant's burn rate
# custom:
#   id: budgets.throttle
#   remediation: Bring the error rate down; the throttle eases level by level as the burn rate falls.
throttle := level if {
	some candidate in data.mc.budgets.levels
	burn_rate > candidate.above
	not stricter_applies(candidate.above)
	level := candidate.level
}

stricter_applies(above) if {
	some other in data.mc.budgets.levels
	other.above > above
	burn_rate > other.above
}

# METADATA
# title: A hard throttle refuses new work
# custom:
#   id: budgets.hard_throttle
#   remediation: The error budget is burning over twice as fast as allowed; pause new executions until the burn rate is below 2.0.
deny contains {"rule": "budgets.hard_throttle", "reason": "error_budget_burn", "level": "hard"} if {
	throttle == "hard"
}
