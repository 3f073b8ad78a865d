# Policy lifecycle: rules marked deprecated carry a migration note and a sunset date; the build
# publishes the notes in the manifest and refuses a bundle that still ships a rule past its sunset.
package mc.lifecycle

import rego.v1

# METADATA
# title: Legacy free plan cannot start executions
# custom:
#   id: lifecycle.legacy_plan
#   deprecated: Plan-based blocking is replaced by budget throttling (mc.budgets); move callers to it.
#   replacement: budgets.throttle
#   sunset: "2099-06-01"
#   remediation: Upgrade from the legacy free plan.
deny contains {"rule": "lifecycle.legacy_plan", "reason": "legacy_plan"} if {
	input.tenant.plan == "legacy-free"
}
