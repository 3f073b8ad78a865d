package mc.privacy_test

import data.mc.privacy
import rego.v1

budget(remaining, hours) := {"privacy": {
	"budget_total": 10,
	"budget_remaining": remaining,
	"leak_per_hour": 1,
	"hours_since_update": hours,
}}

test_exhausted_budget_denies if {
	some d in privacy.deny with input.tenant as budget(0, 0)
	d.reason == "privacy_budget_exceeded"
}

test_leak_refills_budget if {
	count(privacy.deny) == 0 with input.tenant as budget(0, 3)
	privacy.remaining == 3 with input.tenant as budget(0, 3)
}

test_refill_is_capped if {
	privacy.remaining == 10 with input.tenant as budget(8, 100)
}

test_costly_request_denies if {
	some d in privacy.deny with input.tenant as budget(2, 0) with input.request as {"privacy_cost": 5}
	d.reason == "privacy_budget_insufficient"
}

test_affordable_request_allowed if {
	count(privacy.deny) == 0 with input.tenant as budget(5, 0) with input.request as {"privacy_cost": 5}
}
