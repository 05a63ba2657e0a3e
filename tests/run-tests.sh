#!/bin/bash
# The README's test command (make check): run every test, one summary line.
exec /usr/bin/python3 "$(dirname "$0")/run-tests.py" "$@"
