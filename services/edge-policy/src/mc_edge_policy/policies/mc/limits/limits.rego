# Limits in policy: deny with retry advice when the limiter says the caller is over its limit.
package mc.limits

import rego.v1

# METADATA
# title: Over the rate limit
# custom:
#   id: limits.rate_limit
#   remediation: Retry after the advised delay, or ask for a higher limit for this tenant.
violation contains {"rule": "limits.rate_limit", "reason": "rate_limit", "retryAfterMs": retry} if {
	input.limits.allow == false
	retry := object.get(input, ["limits", "retryAfterMs"], 1000)
}

# METADATA
# title: Limiter usage unknown
# custom:
#   id: limits.usage_unknown
#   remediation: The limiter could not be reached; retry shortly.
violation contains {"rule": "limits.usage_unknown", "reason": "limits_unavailable", "retryAfterMs": 1000} if {
	not input.limits
}
