# Workload authorization by SPIFFE ID: the role comes from signed data, never from the caller.
package mc.authz

import rego.v1

default allow := false

spiffe_id := object.get(input, ["caller", "spiffe_id"], "")

role := data.mc.authz.workloads[spiffe_id]

in_trust_domain if startswith(spiffe_id, concat("", ["spiffe://", data.mc.authz.trust_domain, "/"]))

# METADATA
# title: Known workload doing what its role allows
# custom:
#   id: authz.workload_role
allow if {
	in_trust_domain
	input.action in data.mc.authz.role_actions[role]
}

# METADATA
# title: Caller outside the trust domain or unknown
# custom:
#   id: authz.unknown_workload
#   remediation: Call with an SVID of this trust domain whose SPIFFE ID is registered with a role.
deny contains {"rule": "authz.unknown_workload", "reason": "unknown_workload", "spiffe_id": spiffe_id} if {
	not role
}

deny contains {"rule": "authz.unknown_workload", "reason": "unknown_workload", "spiffe_id": spiffe_id} if {
	not in_trust_domain
}

# METADATA
# title: Role does not allow the action
# custom:
#   id: authz.action_not_allowed
#   remediation: Use a workload whose role includes this action (signers publish, fetchers fetch).
deny contains {"rule": "authz.action_not_allowed", "reason": "action_not_allowed", "role": role} if {
	not input.action in data.mc.authz.role_actions[role]
}
