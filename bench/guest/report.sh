# Sourced by the benchmark scripts that run in the test host. /tmp/results
# holds lines "VMM TAG NAME=VALUE" (VMM is brique or qemu); `report TAG NAME`
# prints both medians and the ratio brique/qemu.
median_of() { # VMM TAG NAME
    grep "^$1 $2 $3=" /tmp/results | sed "s/.*$3=//" | sort -n \
        | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

report() { # TAG NAME
    b=$(median_of brique "$1" "$2") q=$(median_of qemu "$1" "$2")
    awk -v m="$1 $2" -v b="$b" -v q="$q" 'BEGIN {
        r = (q + 0 > 0) ? sprintf("%.3f", b / q) : "n/a";
        printf "%-26s brique %10s   qemu microvm %10s   ratio brique/qemu %s\n", m, b, q, r }'
}
