#!/bin/sh
echo "$GREETING"
cat /var/lib/hello/stamp
