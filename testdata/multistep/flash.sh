#!/bin/sh
echo flash firmware
