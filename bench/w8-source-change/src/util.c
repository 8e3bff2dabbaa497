#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util.h"

int parse_options(int argc, char **argv, struct options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->jobs = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            opts->verbose = 1;
        else if (strcmp(argv[i], "-j") == 0 && i + 1 < argc)
            opts->jobs = atoi(argv[++i]);
        else if (argv[i][0] != '-')
            opts->input = argv[i];
        else
            return -1;
    }
    return 0;
}

void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-v] [-j JOBS] [INPUT]\n", prog);
}

int run(const struct options *opts)
{
    if (opts->verbose)
        fprintf(stderr, "jobs: %d, input: %s\n", opts->jobs, opts->input ? opts->input : "-");
    return 0;
}
