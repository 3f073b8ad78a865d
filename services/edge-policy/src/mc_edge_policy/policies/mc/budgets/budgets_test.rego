package mc.budgets_test

import data.mc.budgets
import rego.v1

test_no_throttle_below_one if {
	not budgets.throttle with input.tenant as {"burnRate": 0.9}
}

test_mild if {
	budgets.throttle == "mild" with input.tenant as {"burnRate": 1.2}
}

test_moderate if {
	budgets.throttle == "moderate" with input.tenant as {"burnRate": 1.7}
}

test_hard_denies if {
	budgets.throttle == "hard" with input.tenant as {"burnRate": 2.5}
	count(budgets.deny) == 1 with input.tenant as {"burnRate": 2.5}
}

test_moderate_does_not_deny if {
	count(budgets.deny) == 0 with input.tenant as {"burnRate": 1.7}
}
