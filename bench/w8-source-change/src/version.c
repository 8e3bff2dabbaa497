/* bench.sh rewrites this file in its copy of the context before each build of w8 (the priming
   build and every timed rebuild get a different build_id), so that each rebuild has a real
   source change. */
const char *build_id = "checkout";
