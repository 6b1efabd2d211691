#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# vfio-migtest as a kselftest: KTAP on stdout, exit 0 pass, 1 fail, 4 skip
# (no usable device, or no vfio-migtest). Meant to be installed next to
# `settings` (timeout=) in a kselftest directory and started by
# run_kselftest.sh, or run by hand.
#
# Environment:
#   VFIO_MIGTEST_DEVICES      devices under test, comma-separated (PCI
#                             addresses, mdev UUIDs, /dev/vfio/devices/vfioN);
#                             unset: the built-in simulator
#   VFIO_MIGTEST_DESTINATION  a second device of the same type
#   VFIO_MIGTEST_INCOMPATIBLE a device of another type
#   VFIO_MIGTEST_EXPECT       expectations files, comma-separated
#   VFIO_MIGTEST_OUT          where the result files go
#                             (default: $TMPDIR/vfio-migtest-results)
#   VFIO_MIGTEST              the binary (default: ./vfio-migtest beside this
#                             script, else vfio-migtest from PATH)
# Arguments are passed to `vfio-migtest run` (e.g. --strict, a case filter).

here=$(dirname "$0")
bin=${VFIO_MIGTEST:-}
if [ -z "$bin" ]; then
	if [ -x "$here/vfio-migtest" ]; then
		bin=$here/vfio-migtest
	elif command -v vfio-migtest >/dev/null 2>&1; then
		bin=vfio-migtest
	else
		echo "KTAP version 1"
		echo "1..0 # SKIP vfio-migtest not found: install it beside this script or set VFIO_MIGTEST"
		exit 4
	fi
fi
VFIO_MIGTEST_OUT=${VFIO_MIGTEST_OUT:-${TMPDIR:-/tmp}/vfio-migtest-results}
export VFIO_MIGTEST_OUT
exec "$bin" run --format ktap "$@"
