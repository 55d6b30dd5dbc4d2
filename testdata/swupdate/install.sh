#!/bin/sh
# Installs image.swu into the inactive slot (test payload)
echo "$@"
