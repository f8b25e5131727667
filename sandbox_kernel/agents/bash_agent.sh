#!/usr/bin/env bash
# Sandbox Kernel agent for Bash (bash >= 5 plus coreutils: dd, head, tail, tee, wc, mkfifo,
# mktemp, rm, sleep, stat, base64; busybox versions are fine). It speaks the framed protocol described in
# PROTOCOL.md on its stdin/stdout and runs every cell in ONE persistent shell, so the working
# directory, variables, functions, aliases and options carry over between cells.
#
# Processes (all started by this script, the "controller"; on Kubernetes it is PID 1):
#
#   controller  reads protocol frames from the kernel (its own copy of the original fd 0),
#               parses the JSON and hands the worker a one-line command through the "cmd"
#               FIFO plus the request's payload (id, numbers, code) through the "data" FIFO.
#               `interrupt` is handled right here: SIGINT to the worker's process group, and
#               so is `resume` (see "Resuming" below), also while a cell runs. It counts the
#               frames it reads, and it also notices a dead worker (a cell ran `exec ...` or
#               killed it) and starts a new one.
#   worker      an *interactive* bash (`bash -i`, no tty, no job control, no line editing) that
#               reads its commands from the cmd FIFO. Cells run in it as a top-level
#               `eval "$code"`, so `declare`, `cd`, `alias`, functions all persist. It is
#               interactive on purpose: on SIGINT an interactive bash abandons the command it is
#               running (a `sleep`, a `while :; do :; done`, a pipeline, a function) and goes
#               back to reading its input with all its state intact, exactly like Ctrl-C at a
#               terminal. A non-interactive shell would either exit or carry on with the loop.
#               It runs in its own process group (started under `set -m`) so one
#               `kill -INT -- -PGID` reaches it and the cell's foreground children, and nothing
#               else. Between cells it ignores SIGINT.
#   two pumps   one per stream. The cell's fd 1 and fd 2 are FIFOs; a pump waits for a byte
#               with bash's `read`, takes whatever else is there with `dd bs=1M count=1` (one
#               read(): it returns as soon as bytes are available, which gives live
#               streaming) and wraps the bytes into `out` / `err` frames. Bulk output switches
#               a pump to batches: one background dd makes many reads, so that the processes a
#               frame costs carry a megabyte instead of one pipeful (see __sk_pump). Cell output
#               only ever goes through files and dd/head/tail/tee, never through shell variables
#               (but for small chunks without NUL), so NUL bytes and invalid UTF-8 pass through
#               untouched.
#
#   message pump (__sk_msgpump) writes the worker's messages (error, done, replies), which
#               reach it as lines on a FIFO, after checking each one's request key, type and id.
#
# Writing frames: the pumps, the message pump and the controller write to the protocol fd, each
# frame under a lock so frames never interleave (see "The frame lock" below). The worker shell,
# where user code runs, has no protocol fd, and the controller (and so its subshells, the pumps)
# is not dumpable: it starts itself again through an execute-only copy of the dynamic loader
# (PROTOCOL.md, "What user code can reach").
#
# Resuming (PROTOCOL.md, "Resuming after a dropped stream"): since several processes write
# frames, the replay buffer is not in any one process's memory but in two "spool" files in the
# agent's private directory. Whoever writes a frame also appends it, under the same lock, to
# the current spool file and adds its size to the output offset kept in the lock's state line;
# once that file holds REPLAY_BYTES (8 MiB, or $SANDBOX_AGENT_REPLAY_BYTES) the older file is
# emptied and takes over, so together they always hold at least the last REPLAY_BYTES of output
# in whole frames. A msg frame is built once (printf -v) and written twice, an out/err frame's
# bytes go through tee (or, for a small chunk, through a shell variable): no extra process
# per frame. On `resume` the controller takes the lock and writes the marker line
# "resume TOKEN FROM RECEIVED" and the spooled bytes from FROM on (tail -c); none of that is
# counted as output. RECEIVED is the controller's count of frames read, this one included.
#
# End of a cell ("done after all output"): after the eval the worker publishes a random marker
# in the lock's state line and writes the marker to both stream FIFOs. Each pump drops the
# marker from the data, forwards everything before it, then acknowledges on the "ack" FIFO;
# the worker sends `done` once both acknowledgements are in. Background jobs that keep the
# FIFOs open do not matter: nobody waits for EOF. A marker is never split over two reads: it
# is written with one write() (so it is in the pipe whole or not at all), one dd read drains
# the whole pipe, and a pipe never holds more than 1 MiB (the unprivileged maximum), the dd
# block.
#
# Shell semantics worth knowing:
#   * `exit N` in a cell does not end the session: `exit` is a shell function in the worker
#     that records N and aborts the cell like an interrupt; the cell reports an error
#     "exit status N" (or ok for `exit 0`). In subshells (`( exit 3 )`, `$(exit 3)`) it is the
#     real builtin. If the worker dies anyway (`exec ls`, `kill -9 $$`), a fresh shell is
#     started in the last known working directory; variables and functions are then lost and
#     the cell reports BashError "the shell exited ...".
#   * The cell is run as `eval "$code" || ...`: bash ignores `set -e` inside a command whose
#     status is tested, so `set -e` cannot kill the session (it has no effect in cells).
#   * A non-zero status of the cell's last command → `error` (ename BashError, evalue
#     "exit status N") and `done` status `error`.
#   * Interrupt → `error` ename Interrupted, `done` status `interrupted`. A SIGINT trap set by
#     the user is replaced by the agent's handling between cells. A foreground program that
#     ignores SIGINT is not stopped (the kernel then replaces the sandbox after 2 s).
#   * stdin of cells is /dev/null; redirections of fd 0/1/2 made with `exec` inside a cell last
#     until the end of that cell only. The agent's own fds are closed for the cell.
#   * Background jobs keep writing to the cell streams; their output arrives as out/err frames
#     whenever it is produced (counted against the limit of the cell that is running then).
#     As in any interactive bash, starting one prints "[1] PID" on stderr.
#   * `\u0000` in the code cannot be represented in a bash string and is dropped.
#   * Names beginning with __sk_ / __SK_ belong to the agent.

# ------------------------------------------------------------------------------------------
# JSON helpers (used by the controller and, copied with `declare -f`, by the worker).
# All of them work on bytes (LC_ALL=C) and pass results in globals to avoid forks.
# ------------------------------------------------------------------------------------------

# __sk_json_strtok: take one JSON string token (with its quotes) off the front of __SK_S.
# Sets __SK_T to the raw token and leaves the rest in __SK_S. Returns 1 if malformed.
__sk_json_strtok() {
    local pre t rest=${__SK_S:1}
    [[ $__SK_S == '"'* ]] || return 1
    pre=${rest%%'"'*}
    # Fast path: no backslash before the first quote, so that quote ends the string.
    if [[ $pre != *\\* && $pre != "$rest" ]]; then
        __SK_T="\"$pre\""
        __SK_S=${rest:${#pre}+1}
        return 0
    fi
    # Otherwise blank out escaped backslashes and quotes with same-length placeholders (raw
    # control characters cannot occur in JSON text); the first quote left ends the string.
    t=$rest
    [[ $t == *'\\'* ]] && t=${t//'\\'/$'\x01\x01'}
    [[ $t == *'\"'* ]] && t=${t//'\"'/$'\x01\x01'}
    [[ $t == *'"'* ]] || return 1
    pre=${t%%'"'*}
    __SK_T="\"${rest:0:${#pre}}\""
    __SK_S=${rest:${#pre}+1}
}

# __sk_json_valtok: take one JSON value (any kind) off the front of __SK_S into __SK_T.
__sk_json_valtok() {
    local depth=0 tok='' pre c
    case ${__SK_S:0:1} in
        '"') __sk_json_strtok; return ;;
        '{' | '[')
            while :; do
                pre=${__SK_S%%[\"\{\}\[\]]*}
                [[ $pre == "$__SK_S" ]] && return 1
                tok+=$pre
                __SK_S=${__SK_S:${#pre}}
                c=${__SK_S:0:1}
                case $c in
                    '"') __sk_json_strtok || return 1; tok+=$__SK_T; continue ;;
                    '{' | '[') ((depth++)) ;;
                    *) ((depth--)) ;;
                esac
                tok+=$c
                __SK_S=${__SK_S:1}
                ((depth == 0)) && break
            done
            __SK_T=$tok ;;
        *)
            __SK_T=${__SK_S%%[,\}\]$' \t\r\n']*}
            [[ -n $__SK_T ]] || return 1
            __SK_S=${__SK_S:${#__SK_T}} ;;
    esac
}

# __sk_json_parse TEXT: parse a JSON object into the associative array __SK_J
# (key → raw JSON token of the value). Returns 1 if TEXT is not an object. Written inline
# (few function calls, white space only trimmed when present): it runs for every message.
__sk_json_parse() {
    local s=$1 key tok ws=$' \t\r\n'
    __SK_J=()
    [[ $s == ["$ws"]* ]] && s=${s#"${s%%[!$ws]*}"}
    [[ $s == '{'* ]] || return 1
    s=${s:1}
    [[ $s == ["$ws"]* ]] && s=${s#"${s%%[!$ws]*}"}
    [[ $s == '}'* ]] && return 0
    while :; do
        [[ $s == ["$ws"]* ]] && s=${s#"${s%%[!$ws]*}"}
        [[ $s == '"'* ]] || return 1
        # Keys are plain words in this protocol; a key with escapes is kept raw.
        __SK_S=$s
        __sk_json_strtok || return 1
        key=${__SK_T:1:${#__SK_T}-2}
        s=$__SK_S
        [[ $s == ["$ws"]* ]] && s=${s#"${s%%[!$ws]*}"}
        [[ $s == ':'* ]] || return 1
        s=${s:1}
        [[ $s == ["$ws"]* ]] && s=${s#"${s%%[!$ws]*}"}
        case $s in
            [\"\{\[]*)
                __SK_S=$s
                __sk_json_valtok || return 1
                tok=$__SK_T
                s=$__SK_S ;;
            *)
                tok=${s%%[,\}\]"$ws"]*}
                [[ -n $tok ]] || return 1
                s=${s:${#tok}} ;;
        esac
        __SK_J[$key]=$tok
        [[ $s == ["$ws"]* ]] && s=${s#"${s%%[!$ws]*}"}
        case $s in
            ,*) s=${s:1} ;;
            '}'*) return 0 ;;
            *) return 1 ;;
        esac
    done
}

# __sk_utf8 CODEPOINT: append the UTF-8 encoding of CODEPOINT to __SK_R.
__sk_utf8() {
    local cp=$1 esc
    if ((cp == 0)); then
        return  # bash strings cannot hold NUL: \u0000 is dropped
    elif ((cp < 0x80)); then
        printf -v esc '\\x%02x' "$cp"
    elif ((cp < 0x800)); then
        printf -v esc '\\x%02x\\x%02x' $((0xC0 | cp >> 6)) $((0x80 | (cp & 0x3F)))
    elif ((cp < 0x10000)); then
        printf -v esc '\\x%02x\\x%02x\\x%02x' $((0xE0 | cp >> 12)) \
            $((0x80 | (cp >> 6 & 0x3F))) $((0x80 | (cp & 0x3F)))
    else
        printf -v esc '\\x%02x\\x%02x\\x%02x\\x%02x' $((0xF0 | cp >> 18)) \
            $((0x80 | (cp >> 12 & 0x3F))) $((0x80 | (cp >> 6 & 0x3F))) $((0x80 | (cp & 0x3F)))
    fi
    printf -v esc "$esc"
    __SK_R+=$esc
}

# __sk_json_unescape TOKEN: decode a raw JSON string token (with quotes) into __SK_R.
# Handles \" \\ \/ \b \f \n \r \t and \uXXXX including surrogate pairs (lone surrogates
# become U+FFFD).
__sk_json_unescape() {
    local s=${1:1:${#1}-2} pre hex cp lo bs='\' ph=$'\x01'
    __SK_R=''
    if [[ $s != *"$bs"* ]]; then
        __SK_R=$s
        return
    fi
    # An escaped backslash becomes a placeholder first, so "\\n" is not read as "\n". Raw
    # control characters cannot occur in a valid JSON string, so \x01 is free.
    [[ $s == *"$bs$bs"* ]] && s=${s//"$bs$bs"/"$ph"}
    [[ $s == *"$bs\""* ]] && s=${s//"$bs\""/\"}
    [[ $s == *"$bs/"* ]] && s=${s//"$bs/"/\/}
    if [[ $s != *"${bs}u"* ]]; then
        # Only \b \f \n \r \t are left, and printf %b decodes exactly those the JSON way.
        printf -v s '%b' "$s"
        __SK_R=${s//"$ph"/"$bs"}
        return
    fi
    s=${s//"${bs}n"/$'\n'}
    s=${s//"${bs}t"/$'\t'}
    s=${s//"${bs}r"/$'\r'}
    s=${s//"${bs}b"/$'\b'}
    s=${s//"${bs}f"/$'\f'}
    while [[ $s == *"${bs}u"* ]]; do
        pre=${s%%"${bs}u"*}
        __SK_R+=${pre//"$ph"/"$bs"}
        s=${s:${#pre}+2}
        hex=${s:0:4}
        if [[ $hex != [0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F] ]]; then
            __SK_R+='\u'  # malformed escape: keep it literally
            continue
        fi
        s=${s:4}
        cp=$((16#$hex))
        if ((cp >= 0xD800 && cp <= 0xDBFF)); then
            hex=${s:2:4}
            if [[ ${s:0:2} == "${bs}u" && $hex == [dD][c-fC-F][0-9a-fA-F][0-9a-fA-F] ]]; then
                lo=$((16#$hex))
                cp=$((0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)))
                s=${s:6}
            else
                cp=0xFFFD
            fi
        elif ((cp >= 0xDC00 && cp <= 0xDFFF)); then
            cp=0xFFFD
        fi
        __sk_utf8 "$cp"
    done
    __SK_R+=${s//"$ph"/"$bs"}
}

# A regular expression for one well-formed UTF-8 sequence (bytes, C locale).
__SK_UTF8_RE=$'([\x01-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf][\x80-\xbf]|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf][\x80-\xbf]|[\xf1-\xf3][\x80-\xbf][\x80-\xbf][\x80-\xbf]|\xf4[\x80-\x8f][\x80-\xbf][\x80-\xbf])'
__SK_CTRL=$'[\x01-\x1f]'
__SK_HIGH=$'[\x80-\xff]'

# __sk_json_quote STRING: set __SK_R to STRING as a JSON string literal (with quotes).
# The caller must have LC_ALL=C in effect (bytes, not characters).
# Control characters become escapes; bytes that are not valid UTF-8 become U+FFFD, so the
# message is always valid UTF-8 JSON whatever the text came from (file names, help text).
__sk_json_quote() {
    local s=$1 c e bs='\' fixed
    s=${s//"$bs"/"$bs$bs"}
    s=${s//\"/"$bs\""}
    if [[ $s == *$__SK_CTRL* ]]; then
        s=${s//$'\n'/"${bs}n"}
        s=${s//$'\t'/"${bs}t"}
        s=${s//$'\r'/"${bs}r"}
        while [[ $s =~ $__SK_CTRL ]]; do
            c=${BASH_REMATCH[0]}
            printf -v e '\\u%04x' "'$c"
            s=${s//"$c"/"$e"}
        done
    fi
    if [[ $s == *$__SK_HIGH* && ! $s =~ ^$__SK_UTF8_RE*$ ]]; then
        fixed=''
        while [[ -n $s ]]; do
            if [[ $s =~ ^$__SK_UTF8_RE+ ]]; then
                fixed+=${BASH_REMATCH[0]}
                s=${s:${#BASH_REMATCH[0]}}
            else
                fixed+='\ufffd'
                s=${s:1}
            fi
        done
        s=$fixed
    fi
    __SK_R=\"$s\"
}

# __sk_json_list ITEMS...: set __SK_R to a JSON array of strings.
__sk_json_list() {
    local LC_ALL=C out='' item
    for item in "$@"; do
        __sk_json_quote "$item"
        out+=${out:+,}$__SK_R
    done
    __SK_R="[$out]"
}

# ------------------------------------------------------------------------------------------
# The frame lock, which also holds the shared per-cell state and the replay bookkeeping.
#
# The lock is a FIFO holding one token byte: `read -N 1` takes it (a one-byte read is atomic,
# so exactly one process gets it, the others block), writing the byte back releases it. The
# state FIFO holds one line, "USED LIMIT MARK FIN TOTAL BASE OLD CUR": bytes the current cell
# produced so far, its output_limit, the pending end-of-cell marker ("-" if none), the number
# of the last finished cell, then the replay buffer's state (see "Replay" below): the output
# offset (bytes written to the protocol stream so far), the offset where the current spool
# file starts, the offset where the previous one starts (-1: none yet) and which of the two
# spool files is the current one (0/1). Only the lock holder reads and rewrites it. No
# flock(1), and no small files rewritten per cell (rewriting a small file on ext4 can cost
# milliseconds).
#
# Replay (PROTOCOL.md, "Resuming"): every frame is written, under the lock, both to the
# protocol fd and appended to the current spool file ($__SK_D/spool.CUR, opened by path for
# each write, so no process holds it open), and TOTAL grows by its size (header included).
# Once the current file holds __SK_REPLAY bytes (SANDBOX_AGENT_REPLAY_BYTES, default 8 MiB)
# the other file is emptied and becomes the current one: the two files always hold whole
# frames, at least the last __SK_REPLAY bytes of output (at most twice that plus one frame).
# `resume` (handled by the controller, __sk_resume) writes its marker line and then the kept
# bytes from the requested offset with tail, all under the lock; none of it is counted.
# ------------------------------------------------------------------------------------------

# __sk_rdstate [READ OPTIONS]: read the state line into the globals (the lock is held).
__sk_rdstate() {
    IFS=" " read -r "$@" -u "$__SK_STATE" __SK_USED __SK_LIMIT __SK_MARK __SK_FIN \
        __SK_TOTAL __SK_BASE __SK_OLD __SK_CUR
}
__sk_lock() {
    local tok
    IFS= read -r -N 1 -u "$__SK_LOCK" tok
    __sk_rdstate
}
__sk_unlock() {
    printf '%s %s %s %s %s %s %s %s\n' "${__SK_USED:-0}" "${__SK_LIMIT:-0}" "${__SK_MARK:--}" \
        "${__SK_FIN:-0}" "${__SK_TOTAL:-0}" "${__SK_BASE:-0}" "${__SK_OLD:--1}" "${__SK_CUR:-0}" >&"$__SK_STATE"
    printf x >&"$__SK_LOCK"
}

# __sk_sent N: N more bytes went to the protocol fd and the spool (lock held): count them, and
# switch spool files once the current one holds __SK_REPLAY bytes. The switch (rare) also
# records the offsets in spool.pos, so they survive a state line lost with a dead worker.
__sk_sent() {
    __SK_TOTAL=$((__SK_TOTAL + $1))
    if ((__SK_TOTAL - __SK_BASE >= __SK_REPLAY)); then
        __SK_OLD=$__SK_BASE __SK_BASE=$__SK_TOTAL __SK_CUR=$((1 - __SK_CUR))
        : >|"$__SK_D/spool.$__SK_CUR"
        printf '%s %s %s\n' "$__SK_BASE" "$__SK_OLD" "$__SK_CUR" >|"$__SK_D/spool.pos"
    fi
    return 0
}

# __sk_send JSON: write one msg frame under the frame lock. Used by every process. The frame
# is built once and written twice, to the protocol fd and to the spool (no extra process).
# LC_ALL=C makes ${#1} and ${#__sk_f} byte counts.
__sk_send() {
    local LC_ALL=C __sk_f  # runs in the user's shell too: an agent-owned name
    printf -v __sk_f 'msg %d\n%s' "${#1}" "$1"
    __sk_lock
    printf '%s' "$__sk_f" >&"$__SK_POUT"
    printf '%s' "$__sk_f" >>"$__SK_D/spool.$__SK_CUR"
    __sk_sent "${#__sk_f}"
    __sk_unlock
}

# __sk_wsend JSON: the worker's way to send a message: one line "KEY JSON" on the msg FIFO, read
# by the message pump (__sk_msgpump), which writes the frame. The worker never holds the
# protocol fd; KEY is the one the controller gave the request (PROTOCOL.md, "What user code can
# reach"). The message is built by agent code, so it is one line.
__sk_wsend() {
    printf '%s %s\n' "${__SK_CKEY:-$__SK_KEY}" "$1" >&"$__SK_MSGW"
}

# __sk_msgpump: frame the worker's messages. A background subshell of the controller, so it is
# not dumpable either. It learns each request's key, type and id from the controller (the keys
# FIFO, removed from the directory before any user code runs, so only the controller and this
# pump hold it) and writes a message only if its key is a live one, its type answers that
# request and it is for that request's id: `error` and `done` for an execute (`done` ends the
# key), the matching *_reply for the others. Anything else is dropped and logged.
__sk_msgpump() {
    local line key json k t id want
    local -A kinds ids
    export LC_ALL=C
    trap '' INT
    # A read-only end of our own (the FIFO has no path any more: through /proc/self/fd), so that
    # we see EOF and exit once the controller and the worker are gone.
    local in
    exec {in}</proc/self/fd/"$__SK_MSGR"
    exec {__SK_PIN}<&- {__SK_CMD}<&- {__SK_DATA}<&- {__SK_OUTR}<&- {__SK_ERRR}<&- {__SK_O}>&- \
        {__SK_E}>&- {__SK_MSGW}>&- {__SK_MSGR}<&- </dev/null
    while IFS= read -r -u "$in" line; do
        while read -t 0 -u "$__SK_KEYS"; do
            IFS=" " read -r -u "$__SK_KEYS" k t id || break
            kinds[$k]=$t ids[$k]=$id
        done
        key=${line%% *} json=${line#* }
        t=${kinds[$key]-}
        if [[ -z $key || -z $t ]]; then
            __sk_log "dropped a message without a live key: ${line:0:120}"
            continue
        fi
        want=''
        case $t in
            execute)
                [[ $json == '{"type":"error","id":'* ]] && want=error
                [[ $json == '{"type":"done","id":'* ]] && want=done
                [[ $json == '{"type":"input_request","id":'* ]] && want=input_request ;;
            *) [[ $json == "{\"type\":\"${t}_reply\",\"id\":"* ]] && want=${t}_reply ;;
        esac
        if [[ -z $want || $json != "{\"type\":\"$want\",\"id\":${ids[$key]},"* ]]; then
            __sk_log "dropped a message that does not answer its request: ${json:0:120}"
            continue
        fi
        __sk_send "$json"
        [[ $want == error || $want == input_request ]] || unset "kinds[$key]" "ids[$key]"
    done
}

# __sk_key: a fresh random key in __SK_K (128 bits; bash < 5.1 has no SRANDOM).
__sk_key() {
    if [[ -n ${SRANDOM-} ]]; then
        printf -v __SK_K '%08x%08x%08x%08x' "$SRANDOM" "$SRANDOM" "$SRANDOM" "$SRANDOM"
    else
        printf -v __SK_K '%04x%04x%04x%04x%04x%04x%04x%04x' $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM
    fi
}

# ------------------------------------------------------------------------------------------
# Pumps: one per stream (out / err), each a background subshell of the controller.
# ------------------------------------------------------------------------------------------

# __sk_emit KIND FILE START LEN: forward LEN bytes of FILE (the first __SK_N bytes are the
# chunk; the file is __SK_CS bytes long) from offset START as KIND frames, honouring the
# cell's output limit. Called with the lock held; updates __SK_USED. Each frame goes to the
# protocol fd and to the spool. A small chunk without NUL bytes is also in __SK_V (then
# __SK_VN is __SK_N): the frame is built with printf -v and written twice, no process at all.
# Otherwise the header is written with printf and the bytes with tee, which reads the chunk
# file itself when the frame is all of it (one process, as many as a plain copy) and the
# output of head/tail else. More than 1 MiB (the protocol's largest frame; a batch or a pipe
# that user code enlarged) goes out as several frames.
__sk_emit() {
    local kind=$1 file=$2 start=$3 len=$4 allow h piece spool
    ((len > 0)) || return 0
    [[ $__SK_USED =~ ^[0-9]+$ ]] || __SK_USED=0
    [[ $__SK_LIMIT =~ ^[0-9]+$ ]] || __SK_LIMIT=0
    allow=$len
    if ((__SK_LIMIT > 0)); then
        allow=$((__SK_LIMIT - __SK_USED))
        ((allow < 0)) && allow=0
        ((allow > len)) && allow=$len
    fi
    __SK_USED=$((__SK_USED + len))
    ((allow > 0)) || return 0
    if ((__SK_VN == __SK_N)); then
        printf -v h '%s %d\n%s' "$kind" "$allow" "${__SK_V:start:allow}"
        printf '%s' "$h" >&"$__SK_POUT"
        printf '%s' "$h" >>"$__SK_D/spool.$__SK_CUR"
        __sk_sent "${#h}"
        return 0
    fi
    while ((allow > 0)); do
        piece=$allow
        ((piece > 1048576)) && piece=1048576
        spool="$__SK_D/spool.$__SK_CUR"
        printf -v h '%s %d\n' "$kind" "$piece"
        printf '%s' "$h" >&"$__SK_POUT"
        printf '%s' "$h" >>"$spool"
        if ((start == 0 && piece == __SK_CS)); then
            "${__SK_X[@]}" "$__SK_TEE" -a "$spool" <"$file" >&"$__SK_POUT"
        elif ((start == 0)); then
            "${__SK_X[@]}" "$__SK_HEAD" -c "$piece" "$file" {__SK_POUT}>&- |
                "${__SK_X[@]}" "$__SK_TEE" -a "$spool" >&"$__SK_POUT"
        else
            "${__SK_X[@]}" "$__SK_TAIL" -c +$((start + 1)) "$file" {__SK_POUT}>&- |
                "${__SK_X[@]}" "$__SK_HEAD" -c "$piece" {__SK_POUT}>&- |
                "${__SK_X[@]}" "$__SK_TEE" -a "$spool" >&"$__SK_POUT"
        fi
        __sk_sent $((${#h} + piece))
        start=$((start + piece)) allow=$((allow - piece))
    done
}

# __sk_find_mark FILE MARK: set __SK_K to the byte offset of MARK in the first __SK_N bytes of
# FILE, or -1. A chunk without NUL bytes (the usual case) is searched in a shell variable;
# otherwise the last bytes are checked with tail, then the chunk is scanned NUL-separated
# segment by segment (the marker holds no NUL).
__sk_find_mark() {
    local file=$1 mark=$2 m=${#2} x seg pre off=0
    __SK_K=-1
    ((__SK_N >= m)) || return 0
    if ((__SK_VN == __SK_N)); then
        x=$__SK_V
    elif ((__SK_N <= 262144)); then
        IFS= read -r -d '' -N "$__SK_N" x <"$file"
    fi
    if ((__SK_N <= 262144)); then
        if ((${#x} == __SK_N)); then
            if [[ $x == *"$mark"* ]]; then
                pre=${x%%"$mark"*}
                __SK_K=${#pre}
            fi
            return 0
        fi
    fi
    x=$("${__SK_X[@]}" "$__SK_HEAD" -c "$__SK_N" "$file" {__SK_POUT}>&- | "${__SK_X[@]}" "$__SK_TAIL" -c "$m" {__SK_POUT}>&-)
    if [[ $x == "$mark" ]]; then
        __SK_K=$((__SK_N - m))
        return 0
    fi
    while IFS= read -r -d '' seg || [[ -n $seg ]]; do
        if [[ $seg == *"$mark"* ]]; then
            pre=${seg%%"$mark"*}
            __SK_K=$((off + ${#pre}))
            ((__SK_K + m <= __SK_N)) || __SK_K=-1
            return 0
        fi
        off=$((off + ${#seg} + 1))
        ((off < __SK_N)) || return 0
    done <"$file"
}

# __sk_counts WAIT: read dd's status lines (from the pump's status FIFO) that have come, waiting
# up to WAIT seconds for the first one; got = the latest byte count ("N bytes ... copied"; ''
# if none came) and rec = the latest number of reads ("a+b records in"). Status 1 if no line
# came ("1 byte ..." for one). A line can come in two writes (text, then the newline): one cut by the timeout counts.
__sk_counts() {
    local line rc
    got='' rec=''
    IFS= read -r -t "$1" -u "$sfd" line
    rc=$?
    ((rc == 0)) || [[ -n $line ]] || return 1
    while :; do
        if [[ $line =~ ^([0-9]+)' byte' ]]; then
            got=${BASH_REMATCH[1]}
        elif [[ $line =~ ^([0-9]+)\+([0-9]+)' records in' ]]; then
            rec=$((BASH_REMATCH[1] + BASH_REMATCH[2]))
        fi
        read -t 0 -u "$sfd" || return 0
        IFS= read -r -t 1 -u "$sfd" line || [[ -n $line ]] || return 0
    done
}

# __sk_fill: write the pump's current chunk to stdout and set n to its size (uses the
# pump's locals c, x, nul, fd, sfd). A NUL byte read by `read` is an empty $c or ends a short $x.
__sk_fill() {
    local got rec
    if [[ -z $c ]]; then
        printf '\0'
        n=1
    else
        printf '%s' "$c$x"
        n=$((${#c} + ${#x}))
        ((nul)) && printf '\0' && ((n++))
    fi
    if read -t 0 -u "$fd"; then
        if ((ddbytes)); then
            "${__SK_X[@]}" "$__SK_DD" bs=1048576 count=1 <&"$fd" 2>&"$sfd" {__SK_POUT}>&-
            # It has exited: its counts are in the FIFO already.
            __sk_counts 0.1 && [[ -n $got ]] && n=$((n + got))
        else
            "${__SK_X[@]}" "$__SK_DD" bs=1048576 count=1 <&"$fd" 2>/dev/null {__SK_POUT}>&-
        fi
    fi
}

# __sk_forward FILE N: forward the N bytes of FILE (its size is __SK_CS) as frames of the
# pump's stream, minus the pending end-of-cell marker if it is among them (then acknowledged).
__sk_forward() {
    local file=$1 k mark
    __SK_N=$2
    # A small chunk is also read into __SK_V, for __sk_emit and __sk_find_mark. Only when
    # the file holds exactly the chunk: `read` drops NUL bytes, so a chunk with NULs then
    # comes out short (EOF), and is left to the file-based paths.
    __SK_VN=-1
    if ((__SK_N <= 16384 && __SK_N == __SK_CS)); then
        IFS= read -r -d '' -N "$__SK_N" __SK_V <"$file"
        ((${#__SK_V} == __SK_N)) && __SK_VN=$__SK_N
    fi
    __sk_lock
    mark=$__SK_MARK
    k=-1
    if [[ $mark != - && -n $mark ]]; then
        __sk_find_mark "$file" "$mark"
        k=$__SK_K
    fi
    if ((k >= 0)); then
        __sk_emit "$kind" "$file" 0 "$k"
        __sk_emit "$kind" "$file" $((k + ${#mark})) $((__SK_N - k - ${#mark}))
    else
        __sk_emit "$kind" "$file" 0 "$__SK_N"
    fi
    __sk_unlock
    ((k >= 0)) && printf '%s %s\n' "$kind" "$mark" >&"$__SK_ACK"
    return 0
}

# __sk_handles_usr1 PID: has PID set up a SIGUSR1 handler (bit 10 of SigCgt)? Status 2 when
# /proc does not tell (no such line).
__sk_handles_usr1() {
    local line mask
    while IFS= read -r line; do
        if [[ $line == SigCgt:* ]]; then
            mask=${line#SigCgt:}
            mask=${mask//[[:space:]]/}
            [[ $mask =~ ^[0-9a-fA-F]+$ ]] && (((16#${mask: -8} >> 9) & 1)) && return 0
            return 1
        fi
    done <"/proc/$1/status"
    return 2
} 2>/dev/null

# __sk_batch: a batch of bulk output (__sk_pump's fast mode), set n to its size. One dd makes
# up to 128 reads of the stream FIFO straight into the chunk file, in the background: without
# the pump in between, the pipe is emptied as fast as dd can read (typically 0.5-2 MiB a batch;
# at most 16 MiB). A dd that finishes first (the usual case for a fast writer) has its chunk
# forwarded whole with one tee. While it runs, SIGUSR1 makes GNU dd print how many bytes it
# has written and carry on (SIGINT would not do: after a short read GNU dd exits without writing
# what it read); what is new is copied out of the chunk (dd) and forwarded: every 20 ms while
# output comes and for half a second after it paused, then every 100 ms. The signal waits
# until dd has its handler (SigCgt; where /proc does not show it, as under gVisor, until output
# paused 0.1 s): before, it would end dd (harmlessly: it had read nothing). A marker is never split (bs is 128 KiB, twice the pipe;
# only user code that enlarged its pipe could make one span two batches: its cell then ends
# after the 30 s the worker waits for the acknowledgement).
__sk_batch() {
    local p got rec sent=0 quiet=0 live=1 wait len
    n=0
    (unset POSIXLY_CORRECT; exec "${__SK_X[@]}" "$__SK_DD" bs=131072 count=128 <&"$fd" >|"$chunk" 2>&"$sfd" {__SK_POUT}>&-) &
    p=$!
    while ((live)); do
        wait=0.02
        ((quiet >= 25)) && wait=0.1
        if ! __sk_counts "$wait"; then
            __sk_handles_usr1 "$p"
            case $? in
                0) kill -USR1 "$p" 2>/dev/null && __sk_counts 0.2 ;;
                2) ((quiet >= 5)) && kill -USR1 "$p" 2>/dev/null && __sk_counts 0.2 ;;
            esac
        fi
        [[ -n $got ]] && ((got > n)) && n=$got
        if [[ -n $rec ]] && ((rec >= 128)) || ! kill -0 "$p" 2>/dev/null; then
            # Finished (or gone): its last counts are in the FIFO once it has exited.
            wait "$p" 2>/dev/null
            __sk_counts 0.01 && [[ -n $got ]] && ((got > n)) && n=$got
            live=0
        fi
        ((n > sent)) || { ((quiet++)); continue; }
        quiet=0
        if ((!live && sent == 0)); then
            __SK_CS=$n
            __sk_forward "$chunk" "$n"
        else
            len=$((n - sent))
            "${__SK_X[@]}" "$__SK_DD" if="$chunk" iflag=skip_bytes,count_bytes skip="$sent" count="$len" bs=1048576 \
                2>/dev/null >|"$chunk2" {__SK_POUT}>&-
            __SK_CS=$len
            __sk_forward "$chunk2" "$len"
        fi
        sent=$n
    done
}

# __sk_pump KIND: forward everything that arrives on the KIND FIFO as KIND frames.
#
# Waiting costs no process: the pump blocks in bash's own `read -n 1 -d ''` (exactly one
# byte; a NUL shows up as an empty string with status 0). What else is already in the pipe is
# then taken with one dd read (one read() of up to 1 MiB returns whatever is there: live
# streaming). Every marker starts with byte 0x1e; when the first byte is that and a marker is
# pending, the rest is compared byte by byte, so a cell without output costs the pumps no
# fork at all (a marker is written with one write(): it is in the pipe whole or not at all).
#
# Bulk output (a chunk of 32 KiB or more: the pipe was filling up) switches the pump to fast
# mode, where chunks are batches (__sk_batch): the two processes a chunk costs (dd, tee) then
# carry about a megabyte instead of one pipeful (64 KiB), which is what makes a Bash cell's
# output as fast as the other agents'. A batch of less than 64 KiB switches back.
#
# The chunk files and dd's status FIFO are removed from the directory once opened (the pump and
# its children reach them through /proc/self/fd), and the processes that hold them run through
# the execute-only loader like tee (not dumpable): user code can write into none of them, so a
# frame's header always tells the length of the bytes that follow it.
__sk_pump() {
    local kind=$1 fd sfd cfd cfd2 chunk="$__SK_D/chunk.$1" chunk2="$__SK_D/chunk2.$1" st="$__SK_D/dd.$1"
    local c b x nul rc n m mark got rec ddbytes=0 batch=0 fast=0
    export LC_ALL=C
    trap '' INT
    # Our own read-only end of the stream FIFO, and none of the other ends: once the
    # controller, the worker and every background job are gone, the pump sees EOF and exits
    # (even if the controller was killed without cleaning up).
    exec {fd}<"$__SK_D/$kind"
    exec {__SK_PIN}<&- {__SK_CMD}<&- {__SK_DATA}<&- {__SK_OUTR}<&- {__SK_ERRR}<&- {__SK_O}>&- \
        {__SK_E}>&- {__SK_MSGW}>&- {__SK_MSGR}<&- {__SK_KEYS}<&- </dev/null
    : >"$chunk"
    : >"$chunk2"
    mkfifo "$st"
    exec {cfd}<>"$chunk" {cfd2}<>"$chunk2" {sfd}<>"$st"
    rm -f -- "$st"
    # Reopening our own fds through /proc works wherever /proc is mounted (not dumpable or not).
    if : <"/proc/self/fd/$cfd" 2>/dev/null; then
        rm -f -- "$chunk" "$chunk2"
        chunk=/proc/self/fd/$cfd chunk2=/proc/self/fd/$cfd2
    fi
    # Does this dd report the byte count? Then the chunk file is rewritten in place (1<>),
    # never truncated, unless it is on a tmpfs (/dev/shm) where truncating costs nothing;
    # otherwise it is truncated and measured with wc. __SK_CS tracks the file's size: when it
    # equals the chunk, __sk_emit can hand the file itself to tee. Batches need GNU dd (its
    # SIGUSR1) and a tmpfs.
    "$__SK_DD" bs=4 count=1 </dev/null >/dev/null 2>&"$sfd" {__SK_POUT}>&-
    __sk_counts 0.1 && [[ $got == 0 ]] && ddbytes=1
    [[ $__SK_D == /dev/shm/* ]] && ((ddbytes)) && ddbytes=2
    ((ddbytes == 2)) && [[ $("$__SK_DD" --version 2>/dev/null {__SK_POUT}>&-) == 'dd (coreutils) '* ]] && batch=1
    __SK_CS=0
    while :; do
        if ((fast)); then
            __sk_batch
            ((n >= 65536)) || fast=0
            continue
        fi
        IFS= read -r -d '' -n 1 -u "$fd" c
        rc=$?
        ((rc == 0)) || exit 0  # EOF: no writer left anywhere
        x='' nul=0
        if [[ $c == $'\x1e' ]]; then
            __sk_lock
            mark=$__SK_MARK
            __sk_unlock
            m=${#mark}
            if ((m > 1)) && [[ $mark == $'\x1e'* ]]; then
                # Take the following bytes one at a time while they are there and match.
                while ((${#x} < m - 1)) && read -t 0 -u "$fd"; do
                    IFS= read -r -d '' -n 1 -u "$fd" b || break
                    if [[ -z $b ]]; then
                        nul=1
                        break
                    fi
                    x+=$b
                    [[ $c$x == "${mark:0:${#x}+1}" ]] || break
                done
                if [[ $c$x == "$mark" ]]; then
                    printf '%s %s\n' "$kind" "$mark" >&"$__SK_ACK"
                    continue
                fi
            fi
        fi
        # The chunk: the bytes consumed so far, then whatever else is in the pipe.
        if ((ddbytes == 2)); then
            __sk_fill >|"$chunk"
            __SK_CS=$n
        elif ((ddbytes)); then
            __sk_fill 1<>"$chunk"
            ((n > __SK_CS)) && __SK_CS=$n
        else
            __sk_fill >|"$chunk"
            x=$(wc -c <"$chunk") && n=$((x))
            __SK_CS=$n
        fi
        __sk_forward "$chunk" "$n"
        ((batch && n >= 32768)) && fast=1
    done
}

# ------------------------------------------------------------------------------------------
# Worker side: these functions are copied into the interactive worker shell with declare -f.
# They run inside the user's shell, so each one makes its options local (`local -`) and
# switches off the ones that would break it (-e -u -f -C pipefail, nocasematch).
# ------------------------------------------------------------------------------------------

# exit [N]: end the cell, not the session (see the header). Real exit in subshells.
exit() {
    if [[ $BASHPID != "$__SK_WPID" ]]; then
        builtin exit "$@"
    fi
    __SK_EXIT=${1:-$?}
    [[ $__SK_EXIT =~ ^-?[0-9]+$ ]] || __SK_EXIT=2
    __SK_EXIT=$((__SK_EXIT & 255))
    if [[ -z $__SK_RUN ]]; then
        return "$__SK_EXIT"
    fi
    # SIGINT to ourselves: the interactive shell abandons the cell (see the header).
    builtin kill -INT "$BASHPID"
}

# read [OPTIONS] [NAME...]: the builtin, except in the cell's own shell reading the cell's stdin
# (/dev/null): then the frontend is asked (input_request, with -p's prompt; -s: a password box)
# and the builtin reads the answer. A frontend that does not allow stdin gets the clear error;
# an interrupt abandons the wait like any command. End of input (Ctrl-D) is status 1.
read() {
    if [[ -z $__SK_RUN || $BASHPID != "$__SK_WPID" ]] || [[ ! /dev/stdin -ef /dev/null ]]; then
        builtin read "$@"
        return
    fi
    local - opt prompt='' password=false rest=() OPTIND=1 OPTARG
    __sk_sane
    while getopts ':a:d:ei:n:N:p:rst:u:' opt; do
        case $opt in
            p) prompt=$OPTARG ;;
            s) password=true ;;
            u) __sk_unsane; builtin read "$@"; return ;;
            [adinNt]) rest+=("-$opt" "$OPTARG") ;;
            :|\?) __sk_unsane; builtin read "$@"; return ;;
            *) rest+=("-$opt") ;;
        esac
    done
    rest+=("${@:OPTIND}")
    if [[ $__SK_STDIN != 1 ]]; then
        printf 'bash: read: input is not supported here: this frontend does not answer input requests (allow_stdin is false)\n' >&2
        __sk_unsane
        return 1
    fi
    local had=${LC_ALL+x} user=${LC_ALL-} LC_ALL=C seq line n value junk
    # Answers to earlier (interrupted) requests are dropped first.
    while builtin read -t 0 <"$__SK_D/answers"; do builtin read -r -t 0.01 -N 65536 junk <"$__SK_D/answers"; done
    seq=$((++__SK_ASKED))
    __sk_json_quote "$prompt"
    printf '%s %s\n' "$__SK_CKEY" "{\"type\":\"input_request\",\"id\":$__SK_ID,\"prompt\":$__SK_R,\"password\":$password,\"seq\":$seq}" >"$__SK_D/msg"
    while :; do
        IFS=' ' builtin read -r line n <"$__SK_D/answers" || { __sk_unsane; return 1; }
        value=''
        ((n > 0)) && IFS= builtin read -r -N "$n" value <"$__SK_D/answers"
        [[ $line == "$seq" ]] && break
    done
    __sk_unsane
    if [[ -n $had ]]; then LC_ALL=$user; else unset LC_ALL; fi
    if [[ $n == -1 ]]; then
        printf 'bash: read: the frontend could not answer\n' >&2
        return 1
    fi
    [[ $value == $'\x04' ]] && { builtin read "${rest[@]}" </dev/null; return; }
    builtin read "${rest[@]}" <<<"$value"
}

# __sk_utf8_locale: make the caller's locale UTF-8 (cursor positions are in code points).
# The caller must have done `local LC_ALL`.
__sk_utf8_locale() {
    local cur=${LC_ALL:-${LC_CTYPE:-${LANG:-C}}}
    [[ $cur == *[Uu][Tt][Ff]-8 || $cur == *[Uu][Tt][Ff]8 ]] || LC_ALL=C.UTF-8 2>/dev/null
}

# __sk_sane: options for agent code; caller must have done `local -`.
__sk_sane() {
    set +e +u +f +C +o pipefail +x +v +a
    __SK_NCM=0
    if shopt -q nocasematch; then
        __SK_NCM=1
        shopt -u nocasematch
    fi
}
__sk_unsane() {
    ((__SK_NCM)) && shopt -s nocasematch
    __SK_NCM=0
}

# __sk_request LEN: read a request payload of LEN bytes from the data FIFO: four lines (the
# raw JSON id token, the request's key, two numbers) and the code. Sets __SK_Q=(id a b),
# __SK_KEY and __SK_CODE.
__sk_request() {
    local LC_ALL=C p=''
    if (($1 > 0)); then
        IFS= read -r -N "$1" -u "$__SK_DATA" p
    fi
    __SK_Q=("${p%%$'\n'*}")
    p=${p#*$'\n'}
    __SK_KEY=${p%%$'\n'*}
    p=${p#*$'\n'}
    __SK_Q+=("${p%%$'\n'*}")
    p=${p#*$'\n'}
    __SK_Q+=("${p%%$'\n'*}")
    __SK_CODE=${p#*$'\n'}
}

# __sk_pre SEQ LEN: set up a cell. Every agent function returns 0: with the user's `set -e` a
# failing command at the worker's top level would end the shell.
__sk_pre() {
    local -
    __sk_sane
    __sk_request "$2"
    __SK_ID=${__SK_Q[0]} __SK_CKEY=$__SK_KEY __SK_STDIN=${__SK_Q[2]} __SK_ASKED=0
    __SK_RUN=$1
    __SK_ST=0
    __SK_EXIT=''
    __sk_lock
    __SK_USED=0 __SK_LIMIT=${__SK_Q[1]} __SK_MARK=-
    __sk_unlock
    __sk_unsane
    trap - INT  # from here on SIGINT abandons the cell
    return 0
}

# __sk_reap_runaway: a cell that leaves more than 64 processes running in the worker's process
# group (a fork bomb, say) gets all of them killed, in rounds until none is left (a bomb forks
# while being killed), with a note on its stderr. Builtins only: a bomb leaves no fork to spare.
__sk_reap_runaway() {
    local round f line rest st pg pid killed=0 pids
    for ((round = 0; round < 100; round++)); do
        pids=()
        for f in /proc/[0-9]*/stat; do
            IFS= read -r line <"$f" || continue
            rest=${line##*) }
            st=${rest%% *} rest=${rest#* }
            rest=${rest#* }
            pg=${rest%% *}
            [[ $pg == "$__SK_WPID" && $st != Z ]] || continue
            pid=${f#/proc/} pid=${pid%/stat}
            [[ $pid == "$__SK_WPID" || $pid == "$BASHPID" ]] || pids+=("$pid")
        done 2>/dev/null
        ((round == 0 && ${#pids[@]} <= 64)) && return 0
        ((${#pids[@]} == 0)) && break
        builtin kill -KILL "${pids[@]}" 2>/dev/null
        killed=$((killed + ${#pids[@]}))
    done
    printf '[sandbox] the cell left %d processes running (a fork bomb?); they were killed\n' "$killed" >&"$__SK_E"
    return 0
}

# __sk_post SEQ HOW: finish the cell. HOW is 0 when the eval returned, 1 when called from the
# line after it (only reached with the cell still marked running if the eval was abandoned by
# SIGINT: an interrupt or `exit`), 2 after the shell itself had died.
__sk_post() {
    trap '' INT  # nothing may abandon the bookkeeping
    local -
    __sk_sane
    [[ $__SK_RUN == "$1" ]] || { __sk_unsane; return 0; }
    local st=$__SK_ST how=$2 mark kind m got=0 status=ok trunc=0
    __SK_RUN=''
    __sk_reap_runaway
    # Flush: publish the marker, write it through both streams, wait for both pumps.
    # It starts with byte 0x1e (see __sk_pump) and holds no NUL, newline or space.
    mark=$'\x1e'"sk$1.$RANDOM$RANDOM"$'\x1f'
    __sk_lock
    __SK_MARK=$mark
    __sk_unlock
    printf '%s' "$mark" >&"$__SK_O"
    printf '%s' "$mark" >&"$__SK_E"
    while ((got < 2)) && IFS=' ' read -r -t 30 -u "$__SK_ACK" kind m; do
        [[ $m == "$mark" ]] && ((got++))
    done
    __sk_lock
    __SK_MARK=- __SK_FIN=$1
    ((__SK_LIMIT > 0 && __SK_USED > __SK_LIMIT)) && trunc=$((__SK_USED - __SK_LIMIT))
    __sk_unlock
    if ((how == 2)); then
        __sk_json_list "BashError: the shell exited during the cell (exec or a signal?)" \
            "A new shell was started in the last working directory; variables, functions and aliases are lost."
        __sk_wsend "{\"type\":\"error\",\"id\":$__SK_ID,\"ename\":\"BashError\",\"evalue\":\"the shell exited; state was reset\",\"traceback\":$__SK_R}"
        status=error
    elif ((how == 1)) && [[ -z $__SK_EXIT ]]; then
        __sk_wsend "{\"type\":\"error\",\"id\":$__SK_ID,\"ename\":\"Interrupted\",\"evalue\":\"interrupted (SIGINT)\",\"traceback\":[\"Interrupted: the cell was interrupted\"]}"
        status=interrupted
    else
        [[ -n $__SK_EXIT ]] && st=$__SK_EXIT
        if ((st != 0)); then
            # The traceback quotes the cell's last line: its status is the cell's status.
            local last=${__SK_CODE%"${__SK_CODE##*[![:space:]]}"}
            last=${last##*$'\n'}
            last=${last#"${last%%[![:space:]]*}"}
            local hint=()
            ((st == 137)) && hint=("  (137: killed by SIGKILL, e.g. for running out of memory)")
            __sk_json_list "BashError: exit status $st" ${last:+"  last command: $last"} "${hint[@]}"
            __sk_wsend "{\"type\":\"error\",\"id\":$__SK_ID,\"ename\":\"BashError\",\"evalue\":\"exit status $st\",\"traceback\":$__SK_R}"
            status=error
        fi
    fi
    __SK_EXIT=''
    __sk_wsend "{\"type\":\"done\",\"id\":$__SK_ID,\"status\":\"$status\",\"truncated\":$trunc}"
    # Remember the directory for a replacement shell (only written when it changed).
    if [[ $PWD != "$__SK_PWD" ]]; then
        __SK_PWD=$PWD
        printf '%s' "$PWD" >|"$__SK_D/cwd"
    fi
    __SK_CKEY=''
    __sk_unsane
    return 0
}

# __sk_recover SEQ LEN: run by a fresh worker when the previous one died during cell SEQ.
__sk_recover() {
    __sk_request "$2"
    __SK_ID=${__SK_Q[0]} __SK_CKEY=$__SK_KEY
    __SK_RUN=$1
    __sk_post "$1" 2
}

# __sk_complete SEQ LEN: answer a complete request from the shell's own state (compgen).
__sk_complete() {
    local -
    __sk_sane
    local LC_ALL=$LC_ALL
    __sk_utf8_locale
    local code cur pre word start matches=() line m sep=$' \t\n;|&()<>\'"=`'
    __sk_request "$2"
    code=$__SK_CODE
    cur=${__SK_Q[1]}
    [[ $cur =~ ^[0-9]+$ ]] || cur=${#code}
    ((cur > ${#code})) && cur=${#code}
    pre=${code:0:cur}
    word=${pre##*[$sep]}
    start=$((cur - ${#word}))
    line=${pre:0:start}
    line=${line%"${line##*[![:space:]]}"}
    if [[ $word == '${'* ]]; then
        mapfile -t matches < <(compgen -v -- "${word:2}" 2>/dev/null | LC_ALL=C sort -u)
        matches=("${matches[@]/#/\$\{}")
    elif [[ $word == '$'* ]]; then
        mapfile -t matches < <(compgen -v -- "${word:1}" 2>/dev/null | LC_ALL=C sort -u)
        matches=("${matches[@]/#/\$}")
    elif [[ $word != */* && ( -z $line || $line == *[\;\|\&\(\{] || $line =~ (^|[[:space:];|&])(then|do|else|elif|if|while|until|time|\!|sudo|exec|command)$ ) ]]; then
        mapfile -t matches < <(compgen -c -- "$word" 2>/dev/null | LC_ALL=C sort -u)
    else
        mapfile -t matches < <(compgen -f -- "$word" 2>/dev/null | LC_ALL=C sort -u)
        for m in "${!matches[@]}"; do
            [[ -d ${matches[m]} ]] && matches[m]+=/
        done
    fi
    __sk_json_list "${matches[@]}"
    __sk_wsend "{\"type\":\"complete_reply\",\"id\":${__SK_Q[0]},\"matches\":$__SK_R,\"cursor_start\":$start,\"cursor_end\":$cur}"
    __sk_unsane
}

# __sk_inspect SEQ LEN: `type` (and `help` for builtins and keywords) of the word at the cursor.
__sk_inspect() {
    local -
    __sk_sane
    local LC_ALL=$LC_ALL
    __sk_utf8_locale
    local code cur word text='' kind found=false
    __sk_request "$2"
    code=$__SK_CODE
    cur=${__SK_Q[1]}
    [[ $cur =~ ^[0-9]+$ ]] || cur=${#code}
    ((cur > ${#code})) && cur=${#code}
    word=${code:0:cur}
    word=${word##*[!A-Za-z0-9_.:@+-]}
    local after=${code:cur}
    after=${after%%[!A-Za-z0-9_.:@+-]*}
    word+=$after
    if [[ -n $word ]]; then
        kind=$(type -t -- "$word" 2>/dev/null)
        if [[ -n $kind ]]; then
            found=true
            text=$(type -a -- "$word" 2>&1)
            if [[ $kind == builtin || $kind == keyword ]]; then
                text+=$'\n\n'$(help -- "$word" 2>&1)
            fi
        elif declare -p -- "$word" >/dev/null 2>&1; then
            found=true
            text=$(declare -p -- "$word" 2>&1)
        fi
    fi
    if [[ $found == true ]]; then
        local LC_ALL=C
        __sk_json_quote "$text"
        __sk_wsend "{\"type\":\"inspect_reply\",\"id\":${__SK_Q[0]},\"found\":true,\"data\":{\"text/plain\":$__SK_R}}"
    else
        __sk_wsend "{\"type\":\"inspect_reply\",\"id\":${__SK_Q[0]},\"found\":false,\"data\":{}}"
    fi
    __sk_unsane
}

# __sk_is_complete SEQ LEN: `bash -n` decides; an unterminated construct is "incomplete".
__sk_is_complete() {
    local -
    __sk_sane
    local code out status=complete bs tail
    __sk_request "$2"
    code=$__SK_CODE
    out=$(LC_ALL=C "$BASH" --norc --noprofile -n 2>&1 <<<"$code")
    if [[ $out == *"unexpected end of file"* || $out == *"unexpected EOF"* ||
        $out == *"here-document"*"delimited by end-of-file"* ]]; then
        status=incomplete
    elif [[ $out == *"syntax error"* ]]; then
        status=invalid
    else
        # A trailing unescaped backslash continues the line.
        tail=${code%$'\n'}
        bs=${tail##*[!\\]}
        [[ $tail == *[!\\]* ]] || bs=$tail
        (( ${#bs} % 2 == 1 )) && status=incomplete
    fi
    __sk_wsend "{\"type\":\"is_complete_reply\",\"id\":${__SK_Q[0]},\"status\":\"$status\",\"indent\":\"\"}"
    __sk_unsane
}

# ------------------------------------------------------------------------------------------
# Controller
# ------------------------------------------------------------------------------------------

__sk_log() { printf 'bash_agent: %s\n' "$*" >&2; }

__sk_cleanup() {
    trap - EXIT TERM HUP INT
    [[ -n $__SK_WPID ]] && kill -KILL -- -"$__SK_WPID" "$__SK_WPID" 2>/dev/null
    [[ -n $__SK_PUMPS ]] && kill -KILL $__SK_PUMPS 2>/dev/null
    [[ -n $__SK_D && -d $__SK_D ]] && rm -rf -- "$__SK_D"
}

# Start the worker shell in its own process group, with the cmd FIFO as its input.
__sk_start_worker() {
    local cwd=''
    [[ -s $__SK_D/cwd ]] && { IFS= read -r -d '' cwd <"$__SK_D/cwd"; }
    {
        printf 'PS1= PS2= PS0= PS4="+ "\nunset PROMPT_COMMAND HISTFILE MAILCHECK MAILPATH\n'
        printf 'set +o history +H +m\n'
        declare -p __SK_D __SK_LOCK __SK_STATE __SK_ACK __SK_DATA __SK_O __SK_E __SK_MSGW __SK_UTF8_RE __SK_CTRL \
            __SK_HIGH __SK_REPLAY
        printf '__SK_WPID=$$ __SK_RUN= __SK_EXIT= __SK_NCM=0 __SK_KEY= __SK_CKEY= __SK_PWD=%q\n' "$cwd"
        declare -f __sk_json_quote __sk_json_list __sk_rdstate __sk_lock __sk_unlock __sk_sent __sk_send exit __sk_sane \
            __sk_unsane __sk_utf8_locale __sk_wsend read \
            __sk_request __sk_pre __sk_reap_runaway __sk_post __sk_recover __sk_complete __sk_inspect __sk_is_complete
        [[ -n $cwd ]] && printf 'cd -- %q 2>/dev/null\n' "$cwd"
        # The controller runs with LC_ALL=C; give the user's shell the original locale.
        if [[ -n $__SK_LC_ALL_SET ]]; then
            printf 'export LC_ALL=%q\n' "$__SK_LC_ALL_ORIG"
        else
            printf 'unset LC_ALL\n'
        fi
        printf "trap '' INT\n"
    } >|"$__SK_D/init.sh"
    # set -m gives the background job its own process group (its pgid is its pid), so an
    # interrupt can target the cell without touching the controller or the pumps.
    set -m
    # Its input is a read-only end of the cmd FIFO: if the controller dies, it reads EOF and
    # exits instead of lingering.
    "$BASH" --rcfile "$__SK_D/init.sh" --noediting -i <"$__SK_D/cmd" >&2 \
        {__SK_PIN}<&- {__SK_OUTR}<&- {__SK_ERRR}<&- {__SK_CMD}<&- {__SK_POUT}>&- {__SK_KEYS}<&- {__SK_MSGR}<&- \
        {__SK_LDFD}<&- {__SK_ANS}<&- &
    __SK_WPID=$!
    set +m
}

# __sk_revive: the worker shell died: start a new one. Uses __sk_serve's `last`, `lastid` and
# `lastkey` (the last execute's number, id and key).
__sk_revive() {
    local st payload n
    wait "$__SK_WPID" 2>/dev/null
    st=$?
    if ((st == 137)); then
        # SIGKILL: almost always the kernel's OOM killer (the cgroup's memory limit). Exit as a
        # one-process agent would, so that the kernel sees the sandbox end and reports "out of
        # memory" (it reads the cgroup's OOM count) instead of a shell that merely exited.
        __sk_log "the worker shell was killed by SIGKILL (out of memory?); exiting"
        builtin exit 137
    fi
    __sk_log "the worker shell died (status $st); starting a new one"
    __sk_start_worker
    # Was a cell running (the last execute is not the last finished one)? Then the new shell
    # finishes it (marker + done). A state line that does not come back was lost with the dead
    # shell: put a fresh one in, with the replay offsets rebuilt from spool.pos and the size of
    # the current spool file.
    if IFS= read -r -N 1 -t 1 -u "$__SK_LOCK" st && __sk_rdstate -t 1; then
        st=$__SK_FIN
    else
        __SK_USED=0 __SK_LIMIT=0 __SK_FIN=0 st=-1
        __SK_BASE=0 __SK_OLD=-1 __SK_CUR=0
        [[ -s $__SK_D/spool.pos ]] && read -r __SK_BASE __SK_OLD __SK_CUR _ <"$__SK_D/spool.pos"
        n=$(wc -c <"$__SK_D/spool.$__SK_CUR")
        __SK_TOTAL=$((__SK_BASE + n))
    fi
    __SK_MARK=-
    __sk_unlock
    if ((last > 0 && st != last)); then
        payload=$lastid$'\n'$lastkey$'\n0\n0\n'
        printf '__sk_recover %s %s\n' "$last" "${#payload}" >&"$__SK_CMD"
        printf '%s' "$payload" >&"$__SK_DATA"
    fi
}

# __sk_resume TOKEN OFFSET RECEIVED: answer a `resume` (PROTOCOL.md, "Resuming"). Under the
# frame lock, so that no frame is written in between: the marker line, then every kept byte
# from offset FROM on (OFFSET, or the oldest kept frame if OFFSET is no longer kept, at most
# the end of the output), straight from the spool files. Nothing here counts as output.
__sk_resume() {
    local tok=$1 off=$2 from first t
    ((${#off} > 18)) && off=999999999999999999  # past any end; bash arithmetic is 64-bit
    off=$((10#$off))
    # Wait for the lock (a pump may be writing a big frame). If it does not come because the
    # worker died holding it, replace the worker, which also puts the token back.
    until IFS= read -r -N 1 -t 1 -u "$__SK_LOCK" t; do
        kill -0 "$__SK_WPID" 2>/dev/null || __sk_revive
    done
    __sk_rdstate
    first=$__SK_BASE
    ((__SK_OLD >= 0)) && first=$__SK_OLD
    from=$off
    ((from < first)) && from=$first
    ((from > __SK_TOTAL)) && from=$__SK_TOTAL
    ((from > off)) && __sk_log "resume: $((from - off)) bytes of output were no longer kept"
    printf 'resume %s %d %d\n' "$tok" "$from" "$3" >&"$__SK_POUT"
    if ((from < __SK_BASE)); then
        "${__SK_X[@]}" "$__SK_TAIL" -c +$((from - __SK_OLD + 1)) "$__SK_D/spool.$((1 - __SK_CUR))" >&"$__SK_POUT"
        from=$__SK_BASE
    fi
    ((from < __SK_TOTAL)) && "${__SK_X[@]}" "$__SK_TAIL" -c +$((from - __SK_BASE + 1)) "$__SK_D/spool.$__SK_CUR" >&"$__SK_POUT"
    __sk_unlock
}

# __sk_usage ID: the usage_reply (PROTOCOL.md): this sandbox's own cgroup (v2 or v1), read with
# builtins only, sent by the controller at once (also while a cell runs) like a resume.
__sk_usage() {
    local LC_ALL=C c=/sys/fs/cgroup v json f t n cpu='' scale=0 mem='' lim='' peak='' cg=null
    __sk_cgnum() {  # __sk_cgnum FILE: its number in v ('' when absent, "max" or not a number)
        v=''
        [[ -r $1 ]] && IFS=' ' read -r v n <"$1"
        [[ $v == usage_usec ]] && v=$n  # cpu.stat's first line
        [[ $v =~ ^[0-9]{1,18}$ ]] || v=''
    }
    if [[ -e $c/cgroup.controllers ]]; then
        cg=2
        __sk_cgnum "$c/memory.current"; mem=$v
        __sk_cgnum "$c/memory.max"; lim=$v
        __sk_cgnum "$c/memory.peak"; peak=$v
        __sk_cgnum "$c/cpu.stat"; cpu=$v scale=6
    elif [[ -d $c/memory ]]; then
        cg=1
        __sk_cgnum "$c/memory/memory.usage_in_bytes"; mem=$v
        __sk_cgnum "$c/memory/memory.limit_in_bytes"; lim=$v
        __sk_cgnum "$c/memory/memory.max_usage_in_bytes"; peak=$v
        for f in cpuacct cpu,cpuacct cpu; do
            [[ -r $c/$f/cpuacct.usage ]] && { __sk_cgnum "$c/$f/cpuacct.usage"; cpu=$v scale=9; break; }
        done
    fi
    ((${#lim} >= 19 || ${lim:-0} >= 4611686018427387904)) && lim=''  # "unlimited"
    if [[ -n $cpu ]]; then
        printf -v n "%0$((scale + 1))d" "$((10#$cpu))"
        cpu=${n:0:${#n}-scale}.${n:${#n}-scale}
    fi
    json="{\"type\":\"usage_reply\",\"id\":$1,\"cgroup\":$cg,\"memory\":${mem:-null},\"memory_limit\":${lim:-null},\"memory_peak\":${peak:-null},\"cpu_seconds\":${cpu:-null}}"
    __sk_reply "$json"
}

# __sk_reply JSON: send one msg frame from the controller (usage, file and list replies) and keep
# it in the resume spool. Takes the frame lock as __sk_resume does: a worker that died holding it
# is replaced.
__sk_reply() {
    local f t
    printf -v f 'msg %d\n%s' "${#1}" "$1"
    until IFS= read -r -N 1 -t 1 -u "$__SK_LOCK" t; do
        kill -0 "$__SK_WPID" 2>/dev/null || __sk_revive
    done
    __sk_rdstate
    printf '%s' "$f" >&"$__SK_POUT"
    printf '%s' "$f" >>"$__SK_D/spool.$__SK_CUR"
    __sk_sent "${#f}"
    __sk_unlock
}

# __sk_list ID: file_list (PROTOCOL.md), answered by the controller at once like file_read: the
# regular files below its working directory, with bash's own tests (-L before anything else: a
# symlink is never followed) and one `stat` per 2048 files (no names in its output: a name may
# hold a newline; a file gone meanwhile makes the batch stat file by file). Hidden names are not
# matched (no dotglob), at most 32 directories down; stops at max_files files, max_entries
# names or 1 MiB of reply (`truncated` says which).
__sk_list() {
    local LC_ALL=C id=$1 max=${__SK_J[max_files]:-0} budget=${__SK_J[max_entries]:-0} trunc=false
    local prefix p name depth size=0 files='' skipped='' nskip=0 nfiles=0 i j line json f t nullglob=0
    local size_ stamp n kind
    local -a stack=('') found quoted batch lines
    [[ $max =~ ^[0-9]{1,6}$ ]] && ((max > 0 && max <= 100000)) || max=100000
    [[ $budget =~ ^[0-9]{1,7}$ ]] && ((budget > 0 && budget <= 1000000)) || budget=1000000
    shopt -q nullglob && nullglob=1
    shopt -s nullglob
    while ((${#stack[@]})) && [[ $trunc == false ]]; do
        prefix=${stack[-1]}
        unset 'stack[-1]'
        depth=${prefix//[!\/]/}
        found=() quoted=()
        for p in "./$prefix"*; do
            if ((--budget < 0)); then
                trunc='"entries"'
                break
            fi
            name=${p#./}
            if [[ -L $p ]]; then
                kind=symlink
            elif [[ -d $p ]]; then
                ((${#depth} + 1 < 32)) && stack+=("$name/")
                continue
            elif [[ -f $p ]]; then
                kind=file
            elif [[ -e $p ]]; then
                kind=special
            else
                continue  # gone since it was listed
            fi
            __sk_json_quote "$name"
            ((size += ${#__SK_R} + 48))
            if ((size > 1048576)); then
                trunc='"bytes"'
                break
            fi
            [[ $name == *$__SK_HIGH* && ! $name =~ ^$__SK_UTF8_RE*$ ]] && kind=name
            if [[ $kind != file ]]; then
                ((nskip++ < 100)) && skipped+=",[$__SK_R,\"$kind\"]"
            elif ((nfiles + ${#found[@]} >= max)); then
                trunc='"files"'
                break
            else
                found+=("$p")
                quoted+=("$__SK_R")
            fi
        done
        for ((i = 0; i < ${#found[@]}; i += n)); do
            # At most 2048 files and 256 KiB of names a stat (far below the kernel's ARG_MAX).
            for ((n = 0, j = 0; n < 2048 && i + n < ${#found[@]} && j < 262144; n++)); do
                ((j += ${#found[i + n]} + 8))
            done
            batch=("${found[@]:i:n}")
            mapfile -t lines < <(stat -c '%s %i %y' -- "${batch[@]}" 2>/dev/null {__SK_POUT}>&- {__SK_PIN}<&-)
            if ((${#lines[@]} != ${#batch[@]})); then  # one went away: file by file
                lines=()
                for p in "${batch[@]}"; do
                    line=$(stat -c '%s %i %y' -- "$p" 2>/dev/null {__SK_POUT}>&- {__SK_PIN}<&-) || line=gone
                    lines+=("$line")
                done
            fi
            for ((j = 0; j < ${#batch[@]}; j++)); do
                line=${lines[j]}
                size_=${line%% *} stamp=${line#* }
                # (glob tests, not =~: bash compiles a regular expression at every use)
                [[ -n $size_ && ${#size_} -le 18 && $size_ != *[!0-9]* && -n $stamp && ${#stamp} -le 80 &&
                    $stamp != *[!0-9A-Za-z\ :.+-]* ]] || continue
                files+=",[${quoted[i + j]},$((10#$size_)),\"$stamp\"]"
                ((nfiles++))
            done
        done
    done
    ((nullglob)) || shopt -u nullglob
    json="{\"type\":\"file_reply\",\"id\":$id,\"files\":[${files#,}],\"skipped\":[${skipped#,}],\"truncated\":$trunc}"
    __sk_reply "$json"
}

# __sk_file ID TYPE: file_write / file_read (PROTOCOL.md), answered by the controller at once
# like usage. Paths are relative to the controller's working directory (it never changes it);
# regular files only, opened non-blocking (a FIFO cannot hang the controller). The tools it runs
# (stat, dd, base64, mkdir) are dumpable: they get neither protocol fd ({__SK_POUT}>&- ...).
__sk_file() {
    local LC_ALL=C id=$1 type=$2 path='' off=${__SK_J[offset]:-0} len=${__SK_J[length]:-524288} data json err='' size='' out t f
    if [[ ${__SK_J[path]} == \"*\" ]]; then
        __sk_json_unescape "${__SK_J[path]}"
        path=$__SK_R
    fi
    [[ $len =~ ^[0-9]{1,7}$ ]] && ((len > 0 && len <= 524288)) || len=524288
    if [[ -z $path || ! $off =~ ^[0-9]{1,15}$ ]]; then
        err='malformed request'
    elif [[ $type == file_write ]]; then
        data=${__SK_J[data]:-'""'}
        data=${data:1:${#data}-2}
        ((off == 0)) && [[ $path == */* ]] && mkdir -p -- "${path%/*}" 2>/dev/null {__SK_POUT}>&- {__SK_PIN}<&-
        if [[ ! $data =~ ^[A-Za-z0-9+/]*={0,2}$ ]]; then
            err='bad data'
        elif [[ -e $path && ! -f $path ]]; then
            err='not a regular file'
        elif ((off > 0)) && ! out=$(printf '%s' "$data" | base64 -d {__SK_POUT}>&- {__SK_PIN}<&- | dd of="$path" bs=65536 seek="$off" oflag=seek_bytes,nonblock conv=notrunc status=none 2>&1 {__SK_POUT}>&- {__SK_PIN}<&-); then
            err=${out##*: }  # (dd truncates at seek/bs records, not bytes: never truncate after the first chunk)
        elif ((off == 0)) && ! out=$(printf '%s' "$data" | base64 -d {__SK_POUT}>&- {__SK_PIN}<&- | dd of="$path" bs=65536 oflag=nonblock status=none 2>&1 {__SK_POUT}>&- {__SK_PIN}<&-); then
            err=${out##*: }
        else
            size=$(stat -c %s -- "$path" 2>/dev/null {__SK_POUT}>&- {__SK_PIN}<&-)
        fi
    elif [[ ! -e $path ]]; then
        err='No such file or directory'
    elif [[ ! -f $path ]]; then
        err='not a regular file'
    elif ! size=$(stat -L -c %s -- "$path" 2>&1 {__SK_POUT}>&- {__SK_PIN}<&-) || ! data=$(dd if="$path" bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes,nonblock status=none {__SK_POUT}>&- {__SK_PIN}<&- | base64 -w0 {__SK_POUT}>&- {__SK_PIN}<&-); then
        err='cannot be read'
    fi
    if [[ -n $err ]]; then
        __sk_json_quote "${err:0:200}"
        json="{\"type\":\"file_reply\",\"id\":$id,\"error\":$__SK_R}"
    elif [[ $type == file_write ]]; then
        json="{\"type\":\"file_reply\",\"id\":$id,\"size\":${size:-0}}"
    else
        json="{\"type\":\"file_reply\",\"id\":$id,\"size\":${size:-0},\"data\":\"$data\"}"
    fi
    __sk_reply "$json"
}

# __sk_finished SEQ: has cell SEQ finished (the state line's FIN)? Status 2 if the lock is
# busy right now.
__sk_finished() {
    local tok
    IFS= read -r -N 1 -t 0.05 -u "$__SK_LOCK" tok || return 2
    __sk_rdstate
    __sk_unlock
    ((__SK_FIN == $1))
}

# __sk_sigint_ignored: is SIGINT ignored in this process (bit 1 of SigIgn)?
__sk_sigint_ignored() {
    local line mask
    while IFS= read -r line; do
        if [[ $line == SigIgn:* ]]; then
            mask=${line#SigIgn:}
            mask=${mask//[[:space:]]/}
            [[ $mask =~ ^[0-9a-fA-F]+$ ]] && (((16#$mask >> 1) & 1)) && return 0
            return 1
        fi
    done </proc/self/status 2>/dev/null
    return 1
}

# __sk_reexec ARGS...: start again, where needed, as the controller must run: with SIGINT at
# its default disposition and not dumpable. Back here only once that is so (or cannot be), with
# __SK_LDFD open (the loader copy, or a placeholder) and __SK_X the command that runs a tool
# through the loader copy (empty without one).
__sk_reexec() {
    # A parent may have started us with SIGINT ignored (ipykernel ignores it, and ignored
    # signals survive exec). Bash cannot undo that for a signal ignored on entry, so every
    # cell's commands would ignore the interrupt. Start again through GNU env, which resets
    # it; nothing has been read from the protocol yet. (On Kubernetes the agent is PID 1 and
    # starts with default dispositions.)
    local envp run=() reset=''
    [[ ${1-} == --sk-signals-reset ]] && { reset=1; shift; }
    if [[ -z $reset ]] && __sk_sigint_ignored; then
        for envp in env /usr/bin/env /bin/env; do
            if "$envp" --default-signal=INT true 2>/dev/null; then
                run=("$envp" --default-signal=INT)
                break
            fi
        done
        ((${#run[@]})) || __sk_log "SIGINT is ignored and no env --default-signal: interrupts may not stop commands"
    fi
    # Not dumpable (PROTOCOL.md, "What user code can reach"): processes of our uid cannot open
    # /proc/<pid>/fd of a process that is not dumpable, and the kernel makes a process so when
    # it execs a file it may not read. Bash has no prctl(), so start again through an
    # execute-only copy of the dynamic loader (`ld.so bash agent.sh`). The pumps are our
    # subshells and inherit it; the worker shell (a fresh exec of bash) does not.
    if [[ ${1-} != --sk-nodump=* ]]; then
        local ld dir='' base
        for ld in /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1 /lib/ld-musl-x86_64.so.1 \
            /lib/ld-musl-aarch64.so.1 /lib/ld-linux-armhf.so.3 /lib/ld-linux.so.2; do
            [[ -f $ld ]] || continue
            # The first directory where the copy can run (/dev/shm is often mounted noexec).
            for base in /dev/shm "${TMPDIR:-}" /tmp "${HOME:-}"; do
                [[ -n $base && -d $base && -w $base ]] || continue
                dir=$(mktemp -d "$base/.skld.XXXXXXXX" 2>/dev/null) || continue
                # Opened before the chmod: the fd (inherited by the new process) stays readable.
                if cp -- "$ld" "$dir/ld.so" && exec {__SK_LDFD}<"$dir/ld.so" && chmod 100 "$dir/ld.so" &&
                    "$dir/ld.so" "$BASH" -c : 2>/dev/null; then
                    exec "${run[@]}" "$dir/ld.so" "$BASH" "${BASH_SOURCE[0]}" ${reset:+--sk-signals-reset} \
                        --sk-nodump="$dir:$__SK_LDFD"
                fi
                [[ -n ${__SK_LDFD-} ]] && exec {__SK_LDFD}<&-
                unset __SK_LDFD
                rm -rf -- "$dir"
            done
        done
        __sk_log "cannot start through an execute-only loader: user code could open the protocol stream through /proc"
        ((${#run[@]})) && exec "${run[@]}" "$BASH" "${BASH_SOURCE[0]}" --sk-signals-reset --sk-nodump=
    elif [[ $1 =~ ^--sk-nodump=(.*/\.skld\.[^/:]*):([0-9]+)$ ]]; then
        # Keep the loader copy (for tee/tail, which write the protocol fd) as an open fd only:
        # its path goes, so nobody can replace it.
        __SK_LDFD=${BASH_REMATCH[2]}
        __SK_X=("/proc/self/fd/$__SK_LDFD")
        rm -rf -- "${BASH_REMATCH[1]}"
    fi
    if [[ -z ${__SK_LDFD-} ]]; then
        exec {__SK_LDFD}</dev/null  # a placeholder: the worker closes it like the real one
    fi
}

# __sk_find_tools: __SK_TEE, __SK_TAIL, __SK_HEAD and __SK_DD, the tools the pumps and the
# controller run, by absolute path behind __SK_X; plain names (and no loader) if one is missing.
__sk_find_tools() {
    # The tools that hold the protocol fd or a pump's chunk run through the loader copy: by
    # absolute path (one subshell finds all four).
    local tools
    tools=$(type -P tee tail head dd)
    tools=${tools//$'\n'/ }
    read -r __SK_TEE __SK_TAIL __SK_HEAD __SK_DD _ <<<"$tools"
    ((${#__SK_X[@]})) && [[ $__SK_TEE == /* && $__SK_TAIL == /* && $__SK_HEAD == /* && $__SK_DD == /* ]] ||
        __SK_X=() __SK_TEE=tee __SK_TAIL=tail __SK_HEAD=head __SK_DD=dd
}

# __sk_make_dir: create the agent's private directory __SK_D (FIFOs, spool files), or exit.
__sk_make_dir() {
    local base
    __SK_D=''
    # /dev/shm first: a tmpfs where there is one (on Kubernetes /tmp is a disk emptyDir).
    for base in /dev/shm "${TMPDIR:-}" /tmp "${HOME:-}" "$PWD"; do
        [[ -n $base && -d $base && -w $base ]] || continue
        __SK_D=$(mktemp -d "$base/.skbash.XXXXXXXX" 2>/dev/null) && break
    done
    if [[ -z $__SK_D ]]; then
        __sk_log "no writable directory for the private FIFOs"
        builtin exit 1
    fi
}

# __sk_open_fifos: make the FIFOs in __SK_D and open the controller's fds on them (__SK_OUTR,
# __SK_O, __SK_LOCK, __SK_CMD, ...), which everything started from here on inherits.
__sk_open_fifos() {
    # FIFOs: out/err carry the cell's streams, lock and state hold the frame lock, ack
    # carries the pumps' acknowledgements, cmd the worker's command lines, data the payloads
    # (id, numbers, code) that go with them.
    mkfifo "$__SK_D/out" "$__SK_D/err" "$__SK_D/lock" "$__SK_D/state" "$__SK_D/ack" "$__SK_D/cmd" "$__SK_D/data" \
        "$__SK_D/msg" "$__SK_D/keys" "$__SK_D/answers" || builtin exit 1
    # Everything is opened read-write: opening a FIFO that way never blocks, and because the
    # controller keeps every FIFO open, no reader ever sees EOF and no writer SIGPIPE.
    exec {__SK_OUTR}<>"$__SK_D/out" {__SK_ERRR}<>"$__SK_D/err" {__SK_LOCK}<>"$__SK_D/lock" \
        {__SK_STATE}<>"$__SK_D/state" {__SK_ACK}<>"$__SK_D/ack" {__SK_CMD}<>"$__SK_D/cmd" \
        {__SK_DATA}<>"$__SK_D/data"
    exec {__SK_O}>"$__SK_D/out" {__SK_E}>"$__SK_D/err"
    # msg carries the worker's messages to the message pump, keys the requests' keys from us to
    # it. Both only by fd from now on; keys is in no process the worker or user code can open.
    exec {__SK_MSGR}<>"$__SK_D/msg" {__SK_KEYS}<>"$__SK_D/keys"
    exec {__SK_MSGW}>"$__SK_D/msg"
    # msg keeps its path: `read` in a cell (whose agent fds are closed) sends its input_request
    # there (key-checked like every message); answers carries the frontend's replies back.
    exec {__SK_ANS}<>"$__SK_D/answers"
    rm -f -- "$__SK_D/keys"
}

# __sk_init_replay: the replay buffer's size (__SK_REPLAY) and first spool file, then the frame
# lock's token and its state line, with nothing sent yet.
__sk_init_replay() {
    # The replay buffer's size: SANDBOX_AGENT_REPLAY_BYTES if it is a number, else 8 MiB.
    __SK_REPLAY=${SANDBOX_AGENT_REPLAY_BYTES-}
    if [[ $__SK_REPLAY =~ ^[0-9]+$ ]]; then
        ((${#__SK_REPLAY} > 18)) && __SK_REPLAY=999999999999999999
        __SK_REPLAY=$((10#$__SK_REPLAY))
    else
        __SK_REPLAY=8388608
    fi
    : >"$__SK_D/spool.0" || builtin exit 1
    __SK_USED=0 __SK_LIMIT=0 __SK_MARK=- __SK_FIN=0 __SK_TOTAL=0 __SK_BASE=0 __SK_OLD=-1 __SK_CUR=0
    __sk_unlock  # the lock's token and the one state line
}

# __sk_resume_request RECEIVED: a `resume` (in __SK_J) with its token and offset checked, for
# __sk_resume; a malformed one is logged (__sk_serve's `payload`) and ignored.
__sk_resume_request() {
    local rtok='' roff=${__SK_J[offset]}
    if [[ ${__SK_J[token]} == \"*\" ]]; then
        __sk_json_unescape "${__SK_J[token]}"
        rtok=$__SK_R
    fi
    if [[ $rtok =~ ^[0-9a-f]{32}$ && $roff =~ ^[0-9]+$ ]]; then
        __sk_resume "$rtok" "$roff" "$1"
    else
        __sk_log "ignoring a malformed resume: '$payload'"
    fi
}

# __sk_input_reply: an input_reply (in __SK_J) to the answers FIFO, if it is for the last
# execute (__sk_serve's `lastid`).
__sk_input_reply() {
    # For the running cell's `read`: "SEQ LEN" and the answer (LEN -1: an error).
    local aseq=${__SK_J[seq]} aval='' alen
    if [[ ${__SK_J[id]} == "$lastid" && $aseq =~ ^[0-9]{1,9}$ ]]; then
        if [[ ${__SK_J[error]} == \"*\" ]]; then
            alen=-1
        else
            [[ ${__SK_J[value]} == \"*\" ]] && { __sk_json_unescape "${__SK_J[value]}"; aval=${__SK_R:0:60000}; }
            alen=${#aval}
        fi
        printf '%s %s\n%s' "$aseq" "$alen" "$aval" >&"$__SK_ANS"
    fi
}

# __sk_worker_request TYPE: hand an execute, complete, inspect or is_complete (in __SK_J) to the
# worker: a fresh key (to the message pump), the command line (cmd FIFO) and the payload (data
# FIFO). Counts it in __sk_serve's `seq`; an execute sets its `last`, `lastid`, `lastkey` and
# `intr`.
__sk_worker_request() {
    local type=$1 payload
    seq=$((seq + 1))
    local id=${__SK_J[id]:-null} a b code=''
    [[ $id == \"*\" || $id =~ ^-?[0-9]+$ ]] || id=null
    case $type in
        execute) a=${__SK_J[output_limit]} ;;
        *) a=${__SK_J[cursor_pos]} ;;
    esac
    b=${__SK_J[detail_level]}
    [[ $type == execute ]] && { [[ ${__SK_J[allow_stdin]} == true ]] && b=1 || b=0; }
    [[ $a =~ ^[0-9]+$ ]] || a=''
    [[ $b =~ ^[0-9]+$ ]] || b=0
    [[ $type == execute && -z $a ]] && a=0
    if [[ ${__SK_J[code]} == \"*\" ]]; then
        __sk_json_unescape "${__SK_J[code]}"
        code=$__SK_R
    fi
    # The payload goes through the data FIFO (read there with read -N), the command
    # line through cmd. The command first: a payload bigger than the FIFO can only
    # be written while the worker is reading it.
    __sk_key
    printf '%s %s %s\n' "$__SK_K" "$type" "$id" >&"$__SK_KEYS"
    payload=$id$'\n'$__SK_K$'\n'$a$'\n'$b$'\n'$code
    if [[ $type == execute ]]; then
        # A new cell: repeating the last interrupt must not reach it.
        last=$seq lastid=$id lastkey=$__SK_K intr=0
        # Line 1 runs the cell at top level; line 2 only matters when SIGINT made
        # the shell abandon line 1 (then the cell is still marked running).
        # The redirections give the cell stdin /dev/null and the stream FIFOs, and
        # close the agent's own fds for everything the cell starts.
        # It is repeated: a second SIGINT could abandon it before its first command
        # (`trap '' INT`) runs; once one copy has run the others do nothing.
        printf '__sk_pre %s %s; eval "$__SK_CODE" </dev/null >&%s 2>&%s %s>&- %s>&- %s>&- %s>&- %s>&- %s>&- %s>&- || __SK_ST=$?; __sk_post %s 0\n__sk_post %s 1\n__sk_post %s 1\n__sk_post %s 1\n' \
            "$seq" "${#payload}" "$__SK_O" "$__SK_E" "$__SK_O" "$__SK_E" "$__SK_MSGW" \
            "$__SK_LOCK" "$__SK_STATE" "$__SK_ACK" "$__SK_DATA" "$seq" "$seq" "$seq" "$seq" >&"$__SK_CMD"
    else
        printf '__sk_%s %s %s\n' "$type" "$seq" "${#payload}" >&"$__SK_CMD"
    fi
    printf '%s' "$payload" >&"$__SK_DATA"
}

# __sk_serve: read the kernel's frames and act on each until `shutdown`, EOF or a bad frame
# header. Its locals are the session's state, which __sk_revive and the request functions
# above read and set: seq (requests handed to the worker), last, lastid and lastkey (the last
# execute's number, id and key), intr and intr_seq (interrupts still to repeat, for that cell).
__sk_serve() {
    # recv: frames read from the kernel (every one, `resume` included), for `resume`.
    local header='' line kind len payload type seq=0 rc last=0 lastid=null lastkey='' intr=0 intr_seq=0 wait_s recv=0
    declare -gA __SK_J
    while :; do
        # Wait for a header line; every second check that the worker is still alive.
        wait_s=1
        ((intr)) && wait_s=0.25
        IFS= read -r -t "$wait_s" -u "$__SK_PIN" line
        rc=$?
        if ((rc > 128)); then
            header+=$line
            # An interrupt can be lost: bash ignores a SIGINT when the foreground child does
            # not die of it (it caught it, or got it while starting up). Repeat it a few
            # times while the cell is still running.
            if ((intr > 0)); then
                __sk_finished "$intr_seq"
                case $? in
                    0) intr=0 ;;
                    1) kill -INT -- -"$__SK_WPID" 2>/dev/null; ((intr--)) ;;
                esac
            fi
            kill -0 "$__SK_WPID" 2>/dev/null || __sk_revive
            continue
        fi
        ((rc == 0)) || break  # EOF: the kernel is gone
        header+=$line
        line=$header
        header=''
        kind=${line%% *}
        len=${line#* }
        if [[ $kind != msg || ! $len =~ ^[0-9]+$ || ${#line} -gt 32 || len -gt 1048576 ]]; then
            __sk_log "protocol error: bad frame header '$line'"
            break
        fi
        payload=''
        if ((len > 0)); then
            IFS= read -r -N "$len" -u "$__SK_PIN" payload || break
        fi
        recv=$((recv + 1))
        if ! __sk_json_parse "$payload" || [[ ${__SK_J[type]} != \"*\" ]]; then
            __sk_log "protocol error: bad message '$payload'"
            continue
        fi
        type=${__SK_J[type]}
        type=${type:1:${#type}-2}
        case $type in
            interrupt)
                # SIGINT to the worker's process group: the running command and the shell
                # itself. Between cells the worker ignores SIGINT.
                kill -INT -- -"$__SK_WPID" 2>/dev/null
                ((last > 0)) && intr=6 intr_seq=$last ;;
            shutdown)
                break ;;
            resume)
                # Answered right here, also while a cell runs. A malformed one is ignored.
                __sk_resume_request "$recv" ;;
            input_reply)
                __sk_input_reply ;;
            usage)
                local uid=${__SK_J[id]:-null}
                [[ $uid =~ ^\"[A-Za-z0-9_.:-]{1,64}\"$ ]] || uid=null
                __sk_usage "$uid" ;;
            file_write | file_read)
                local fid=${__SK_J[id]:-null}
                [[ $fid =~ ^\"[A-Za-z0-9_.:-]{1,64}\"$ ]] || fid=null
                __sk_file "$fid" "$type" ;;
            file_list)
                local lid=${__SK_J[id]:-null}
                [[ $lid =~ ^\"[A-Za-z0-9_.:-]{1,64}\"$ ]] || lid=null
                __sk_list "$lid" ;;
            execute | complete | inspect | is_complete)
                __sk_worker_request "$type" ;;
            *)
                __sk_log "ignoring message of type '$type'" ;;
        esac
    done
}

# __sk_main ARGS...: the controller (see the header): set itself up, start the pumps, the
# message pump and the worker, announce itself (`ready`) and serve the kernel until it goes.
__sk_main() {
    __sk_reexec "$@"
    __sk_find_tools
    __SK_LC_ALL_SET=${LC_ALL+set} __SK_LC_ALL_ORIG=${LC_ALL-}
    export LC_ALL=C  # the controller works on bytes; the worker gets the user's locale back
    umask 077
    shopt -u patsub_replacement 2>/dev/null
    # Take the protocol off fd 0/1: nothing started from here on can read or write it by
    # accident. fd 1 of the controller becomes the log (our stderr).
    exec {__SK_PIN}<&0 {__SK_POUT}>&1 </dev/null >&2

    __sk_make_dir
    trap __sk_cleanup EXIT
    # Caught (not ignored) signals: children get the default dispositions back, so cells see
    # a normal SIGINT / SIGPIPE. As PID 1 on Kubernetes, TERM must be handled to be felt.
    trap 'builtin exit 143' TERM HUP
    trap 'builtin exit 141' PIPE
    trap : INT
    __sk_open_fifos
    __sk_init_replay

    __sk_pump out &
    __SK_PUMPS=$!
    __sk_pump err &
    __SK_PUMPS+=" $!"
    __sk_msgpump &
    __SK_PUMPS+=" $!"
    __sk_start_worker

    local v=${BASH_VERSION%%[!0-9.]*}
    __sk_send "{\"type\":\"ready\",\"language_info\":{\"name\":\"bash\",\"version\":\"$v\",\"mimetype\":\"text/x-sh\",\"file_extension\":\".sh\",\"pygments_lexer\":\"bash\",\"codemirror_mode\":\"shell\"},\"agent\":\"bash\",\"protocol\":2}"

    __sk_serve
    builtin exit 0
}

__sk_main "$@"
