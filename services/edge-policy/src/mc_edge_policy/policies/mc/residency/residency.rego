# Residency: a tenant's data stays in its home region's group; cross-region requests are denied.
package mc.residency

import rego.v1

tenant_id := object.get(input, ["tenant", "id"], "")

home := data.mc.residency.tenant_regions[tenant_id]

target := object.get(input, ["resource", "region"], "")

# METADATA
# title: Tenant without a home region
# custom:
#   id: residency.unknown_tenant
#   remediation: Register the tenant's home region in the residency data before it runs work.
deny contains {"rule": "residency.unknown_tenant", "reason": "residency_unknown_tenant"} if {
	not home
}

# METADATA
# title: Request leaves the tenant's residency group
# custom:
#   id: residency.cross_region
#   remediation: Run the work in a region of the tenant's home group, or get a residency exception approved.
deny contains {"rule": "residency.cross_region", "reason": "cross_region_denied", "home": home, "target": target} if {
	home
	not same_group(home, target)
}

same_group(a, b) if {
	group := data.mc.residency.region_groups[a]
	group == data.mc.residency.region_groups[b]
}
