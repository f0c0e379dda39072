#!/bin/sh
set -eu
echo "working folder: $(pwd)"
ls -la
echo "cpus: $(nproc)"
