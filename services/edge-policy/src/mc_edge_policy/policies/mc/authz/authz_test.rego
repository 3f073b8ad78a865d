package mc.authz_test

import data.mc.authz
import rego.v1

fetcher := "spiffe://mc.local/ns/mc/sa/edge-fetcher"

signer := "spiffe://mc.local/ns/mc/sa/bundle-signer"

test_fetcher_fetches if {
	authz.allow with input.caller as {"spiffe_id": fetcher} with input.action as "bundle.fetch"
}

test_fetcher_cannot_publish if {
	not authz.allow with input.caller as {"spiffe_id": fetcher} with input.action as "bundle.publish"
	some d in authz.deny with input.caller as {"spiffe_id": fetcher} with input.action as "bundle.publish"
	d.reason == "action_not_allowed"
}

test_signer_publishes if {
	authz.allow with input.caller as {"spiffe_id": signer} with input.action as "bundle.publish"
}

test_unknown_workload_denied if {
	rogue := {"spiffe_id": "spiffe://mc.local/ns/x/sa/rogue"}
	not authz.allow with input.caller as rogue with input.action as "bundle.fetch"
	some d in authz.deny with input.caller as rogue with input.action as "bundle.fetch"
	d.reason == "unknown_workload"
}

test_other_trust_domain_denied if {
	evil := {"spiffe_id": "spiffe://evil.example/ns/mc/sa/edge-fetcher"}
	not authz.allow with input.caller as evil with input.action as "bundle.fetch"
}

test_caller_asserted_role_is_ignored if {
	claimed := {"spiffe_id": "spiffe://mc.local/x", "role": "signer"}
	not authz.allow with input.caller as claimed with input.action as "bundle.fetch"
}
