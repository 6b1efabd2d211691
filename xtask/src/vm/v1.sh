# The v1 lane of the VM lab guest, sourced by /init: the v1mig reference
# driver (xtask/drivers/v1mig) is loaded once per line of /etc/v1-configs
# ("name|module parameters|extra run arguments|tools", from
# xtask/src/vm/v1mig.rs; tools 1: also probe, save and resume),
# with two v1mig-a devices (under test, destination) and a v1mig-b one
# (incompatible). Results go to /results/v1/<name>/; the host judges them.

V1_A=83b8f4f2-509f-382f-3c1e-e6bfe0fa2001 # v1mig-a, the device under test
V1_B=83b8f4f2-509f-382f-3c1e-e6bfe0fa2002 # v1mig-a, the migration destination
V1_C=83b8f4f2-509f-382f-3c1e-e6bfe0fa2003 # v1mig-b, its stream must be refused
V1_TYPES=/sys/class/mdev_bus/v1mig/mdev_supported_types

v1_lane() {
    while IFS='|' read -r name params args tools; do
        v1_config "$name" "$params" "$args" "$tools"
    done </etc/v1-configs
}

# Loads the driver with the parameters $2, runs the suite with the extra
# arguments $3 (and the tools if $4 is 1), records the driver's data-area
# counters and unloads it.
v1_config() {
    dir=/results/v1/$1
    mkdir -p "$dir"
    say "v1 lane $1: insmod v1mig.ko $2"
    # $2 and $3 are word lists: unquoted on purpose.
    # shellcheck disable=SC2086
    if ! insmod /drivers/v1mig.ko $2; then
        setup_failed "insmod v1mig.ko $2 failed"
        return 1
    fi
    if v1_create "$V1_A" a && v1_create "$V1_B" a && v1_create "$V1_C" b; then
        # shellcheck disable=SC2086
        suite "v1-$1" vfio-migtest run --device "$V1_A" --destination "$V1_B" \
            --incompatible "$V1_C" --out "$dir" $3
        [ "$4" = 1 ] && v1_tools "$1" "$dir"
        for uuid in "$V1_A" "$V1_B"; do
            counters=/sys/bus/mdev/devices/$uuid/v1mig
            echo "$uuid $(cat "$counters/data_rw_bytes") $(cat "$counters/mmaps")" \
                >>"$dir/counters"
        done
    fi
    for uuid in "$V1_A" "$V1_B" "$V1_C"; do
        [ -e "/sys/bus/mdev/devices/$uuid" ] && echo 1 >"/sys/bus/mdev/devices/$uuid/remove"
    done
    rmmod v1mig
    echo $? >"$dir/unload"
}

# probe, and a migration through a file: save on one v1mig-a, resume on
# the other and save it again, then into the v1mig-b device (--force: the
# driver must refuse it).
v1_tools() {
    suite "v1-$1-probe" vfio-migtest probe --device "$V1_A"
    suite "v1-$1-save" vfio-migtest save --device "$V1_A" --file "$2/a.vmsave"
    suite "v1-$1-resume" vfio-migtest resume --device "$V1_B" --file "$2/a.vmsave" \
        --resave "$2/b.vmsave"
    suite "v1-$1-resave-identical" same_stream "$2/a.vmsave" "$2/b.vmsave"
    suite "v1-$1-resume-foreign" vfio-migtest resume --device "$V1_C" --file "$2/a.vmsave" \
        --force
}

# Creates the v1mig device $1 of type v1mig-$2.
v1_create() {
    echo "$1" >"$V1_TYPES/v1mig-$2/create" ||
        { setup_failed "cannot create v1mig-$2 device $1"; return 1; }
    vfio_group "/sys/bus/mdev/devices/$1" >/dev/null ||
        { setup_failed "v1mig-$2 device $1 has no /dev/vfio group node"; return 1; }
}
