package mc.residency_test

import data.mc.residency
import rego.v1

test_same_region_allowed if {
	count(residency.deny) == 0 with input.tenant as {"id": "acme"} with input.resource as {"region": "eu-west-1"}
}

test_same_group_allowed if {
	count(residency.deny) == 0 with input.tenant as {"id": "acme"} with input.resource as {"region": "eu-central-1"}
}

test_cross_region_denied if {
	some d in residency.deny with input.tenant as {"id": "acme"} with input.resource as {"region": "us-east-1"}
	d.reason == "cross_region_denied"
}

test_unknown_region_denied if {
	some d in residency.deny with input.tenant as {"id": "acme"} with input.resource as {"region": "mars-1"}
	d.reason == "cross_region_denied"
}

test_unknown_tenant_denied if {
	some d in residency.deny with input.tenant as {"id": "nobody"} with input.resource as {"region": "eu-west-1"}
	d.reason == "residency_unknown_tenant"
}
