# Shared by imgforge's first-boot scripts (sourced, not run): IMDSv2 calls
# with a session token and short timeouts. Off EC2 nothing answers and every
# call fails fast; callers treat that as "nothing to do".
IMDS=${IMGFORGE_IMDS:-http://169.254.169.254}
IMDS_TOKEN=""

# Gets a session token; fails when no metadata service answers.
imds_token() {
    [ -n "$IMDS_TOKEN" ] && return 0
    IMDS_TOKEN=$(curl -sf --connect-timeout 2 -m 4 --retry 2 --retry-connrefused -X PUT \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token") || return 1
    [ -n "$IMDS_TOKEN" ]
}

# Prints a metadata path (e.g. meta-data/instance-id); fails when absent.
imds_get() {
    imds_token || return 1
    curl -sf --connect-timeout 2 -m 10 -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS/latest/$1"
}
