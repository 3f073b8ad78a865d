package mc.limits_test

import data.mc.limits
import rego.v1

test_over_limit_gives_retry_advice if {
	some v in limits.violation with input.limits as {"allow": false, "retryAfterMs": 250}
	v.retryAfterMs == 250
	v.reason == "rate_limit"
}

test_under_limit_passes if {
	count(limits.violation) == 0 with input.limits as {"allow": true}
}

test_missing_usage_fails_closed if {
	some v in limits.violation with input.other as true
	v.reason == "limits_unavailable"
}
