# Release targets for make: include this file from your Makefile (`include otaforge.mk`).
# OTAFORGE_SIGNING_KEY, AZURE_STORAGE_* and the service settings come from the environment.

OTAFORGE ?= otaforge

.PHONY: release release-check
release-check:          ## build and check the release offline
	$(OTAFORGE) release --dry-run

release: release-check  ## build, upload, import and roll out (resumes when re-run)
	$(OTAFORGE) release
