#!/usr/bin/env node
'use strict';
// Launcher for the pinned @20minutes/s3rver: its npm tarball ships no bin/s3rver.js although its
// package.json declares one, so we call its CLI module directly. Started by tests/support/s3rver.py
// with the same flags as the upstream `s3rver` command (--directory, --address, --port, ...).
require('@20minutes/s3rver/lib/cli')
  .parseAsync(process.argv)
  .catch((err) => {
    console.error(err);
    process.exit(1);
  });
