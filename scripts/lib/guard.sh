# shellcheck shell=bash
# The switch guard of scripts/test.sh: refuses a run whose environment would skip or filter tests,
# so that "scripts/test.sh passed" always means every test ran. Sourced; defines functions only.
#
# The classification of every KILN_ variable is the table in scripts/test.sh's header (one place,
# read by these functions and checked against the repository by scripts/check-switches.sh):
#   refused   stops the run before anything is installed or built, naming the variable.
#             KILN_ALLOW_SKIPS=1 lets a developer's own run use them (printed at start and end);
#             under CI (CI set to anything but "" / "false" / "0") KILN_ALLOW_SKIPS is refused too.
#   allowed   printed at the start when set.
#   internal  set by the scripts or programs for what they start; not printed.
# A KILN_ variable missing from the table is refused as unclassified: a new switch cannot slip
# through a green CI before someone has decided what it is.

# switch_table FILE [CLASS]: prints "NAME CLASS NOTE" for each row of FILE's switch table: the
# lines between "# switches:" and "# end of switches" shaped "#   <name>  <class>  <note>", a
# note going on over the following lines indented by more than four spaces.
switch_table() {
    local file="$1" want="${2:-}" line in=0 row=""
    while IFS= read -r line; do
        if [[ "$line" == "# switches:"* ]]; then in=1; continue; fi
        ((in)) || continue
        if [[ "$line" =~ ^#[[:space:]]+(KILN_[A-Z0-9_]+)[[:space:]]+(refused|allowed|internal)[[:space:]]+(.*)$ ]]; then
            [[ -z "$row" ]] || echo "$row"
            row=""
            [[ -z "$want" || "$want" == "${BASH_REMATCH[2]}" ]] || continue
            row="${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[3]}"
        elif [[ -n "$row" && "$line" =~ ^#[[:space:]]{5,}([^[:space:]].*)$ ]]; then
            row+=" ${BASH_REMATCH[1]}"
        else
            [[ -z "$row" ]] || echo "$row"
            row=""
            [[ "$line" != "# end of switches"* ]] || break
        fi
    done <"$file"
    [[ -z "$row" ]] || echo "$row"
}

# in_ci: true when the CI variable says this is a CI run.
in_ci() { [[ -n "${CI:-}" && "${CI:-}" != false && "${CI:-}" != 0 ]]; }

# switch_guard TABLE-FILE: checks the environment against the table. Returns 1 (after printing
# every offending variable on stderr) when the run must not go on; else prints what is in effect
# and sets SWITCHES_IN_EFFECT (the refused variables a developer allowed, for the closing line).
switch_guard() {
    local file="$1" name class note
    local -A cls=() notes=()
    while read -r name class note; do
        cls[$name]="$class"
        notes[$name]="$note"
    done < <(switch_table "$file")
    if ((${#cls[@]} == 0)); then
        echo "switch guard: no switch table found in $file" >&2
        return 1
    fi

    local refused=() unclassified=() allowed=() v
    for name in $(compgen -e | grep '^KILN_' | LC_ALL=C sort || true); do
        [[ "$name" == KILN_ALLOW_SKIPS ]] && continue
        v="${!name}"
        ((${#v} <= 60)) || v="${v:0:60}..."
        case "${cls[$name]:-}" in
            refused) refused+=("  $name=$v: ${notes[$name]}") ;;
            allowed) allowed+=("  $name=$v") ;;
            internal) ;;
            *) unclassified+=("  $name=$v: not classified in the switch table of $file") ;;
        esac
    done

    local allow="${KILN_ALLOW_SKIPS:-}" problems=()
    case "$allow" in
        ""|0) allow=0 ;;
        1) if in_ci; then
               problems+=("  KILN_ALLOW_SKIPS=1: refused under CI=${CI} (a CI run runs every test)")
               allow=0
           fi ;;
        *) problems+=("  KILN_ALLOW_SKIPS=$allow: expected 1 or unset"); allow=0 ;;
    esac
    ((${#unclassified[@]})) && problems+=("${unclassified[@]}")
    ((allow == 0 && ${#refused[@]})) && problems+=("${refused[@]}")

    if ((${#problems[@]})); then
        {
            echo "switch guard: refusing to run: these environment variables would skip, filter or"
            echo "replace tests, so a pass would not mean that everything passed:"
            printf '%s\n' "${problems[@]}"
            if in_ci; then
                echo "Under CI (CI=${CI}) every test runs: remove them from the CI environment."
            else
                echo "Unset them for a full run. For a partial run of your own, add KILN_ALLOW_SKIPS=1"
                echo "(a new KILN_ variable must first be classified in the table at the top of $file)."
            fi
        } >&2
        return 1
    fi

    SWITCHES_IN_EFFECT=""
    if ((${#refused[@]})); then
        {
            echo "################################################################################"
            echo "switch guard: KILN_ALLOW_SKIPS=1: this run does NOT run every test:"
            printf '%s\n' "${refused[@]}"
            echo "################################################################################"
        } >&2
        for v in "${refused[@]}"; do
            v="${v#  }"
            SWITCHES_IN_EFFECT+="${SWITCHES_IN_EFFECT:+ }${v%%=*}"
        done
    fi
    if ((${#allowed[@]})); then
        echo "switch guard: settings from the environment:" >&2
        printf '%s\n' "${allowed[@]}" >&2
    fi
    return 0
}
