#!/usr/bin/env bash
# Generate TypeScript types from the committed spec and type-check the example client against them,
# so a spec change that would break the run console's types fails CI.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund
# --default-non-nullable false: request fields with a default (ResumeRequest.input, …) stay optional;
# response fields the server always sends are listed as required in the spec itself.
npx --no-install openapi-typescript ../openapi.json -o generated/api.d.ts --default-non-nullable false
npx --no-install tsc --noEmit
