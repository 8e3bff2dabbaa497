#include <stdio.h>
#include "util.h"

extern const char *build_id;

int main(int argc, char **argv)
{
    struct options opts;
    if (parse_options(argc, argv, &opts) != 0) {
        usage(argv[0]);
        return 2;
    }
    printf("bench-app %s (%s)\n", VERSION, build_id);
    return run(&opts);
}
