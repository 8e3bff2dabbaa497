#ifndef UTIL_H
#define UTIL_H

#define VERSION "1.0.0"

struct options {
    int verbose;
    int jobs;
    const char *input;
};

int parse_options(int argc, char **argv, struct options *opts);
void usage(const char *prog);
int run(const struct options *opts);

#endif
