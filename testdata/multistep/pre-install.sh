#!/bin/sh
echo pre-install
