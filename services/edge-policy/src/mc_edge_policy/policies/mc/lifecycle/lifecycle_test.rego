package mc.lifecycle_test

import data.mc.lifecycle
import rego.v1

test_legacy_plan_denied if {
	count(lifecycle.deny) == 1 with input.tenant as {"plan": "legacy-free"}
}

test_other_plans_pass if {
	count(lifecycle.deny) == 0 with input.tenant as {"plan": "team"}
}
