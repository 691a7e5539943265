"""The device agent's files in the bundle (pipeline.export.bundle writes them): its systemd unit and the
README's section on it. The agent (`edge-app agent`) lets a host measure its models on this device;
``./install.sh --agent`` makes its token (agent.token, mode 600) and renders the unit."""

from __future__ import annotations

AGENT_TOKEN = "agent.token"

AGENT_SERVICE = """[Unit]
Description=nin-pipeline device agent ({name}): bench and eval of a host's models on this device
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
User=@USER@
SupplementaryGroups=video
WorkingDirectory=@DIR@
# NIN_AGENT_LISTEN and NIN_AGENT_ARGS (e.g. --data cifar=/home/pi/cifar10-test) are set in edge-app.env
EnvironmentFile=@DIR@/edge-app.env
ExecStart=@DIR@/.venv/bin/edge-app agent --listen ${{NIN_AGENT_LISTEN}} --token-file @DIR@/{token} $NIN_AGENT_ARGS
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""

AGENT_README = """
## The device agent: measure a host's models here

`edge-app agent` serves this device's runtime to a host on the network: the host uploads a model (named
by its sha256) and asks for `bench`, `eval` (on a labelled folder of this device, by the alias given with
`--data`), `check-target`, `info` or `check-input`; each job runs in a child process with a time limit,
one at a time. No TensorFlow. Off loopback it wants a token:

    ./install.sh --agent          # also makes agent.token (mode 600, keep it to the host) and nin-edge-agent.service
    # in edge-app.env: NIN_AGENT_LISTEN (0.0.0.0:8765) and NIN_AGENT_ARGS, e.g. "--data cifar=/home/pi/cifar10-test"
    sudo cp nin-edge-agent.service /etc/systemd/system/
    sudo systemctl enable --now nin-edge-agent
    journalctl -u nin-edge-agent -f

Or by hand: `.venv/bin/edge-app agent --listen 0.0.0.0:8765 --token-file agent.token --data cifar=DIR`
(`--help` has the caps: model size, cache, job time limit).
"""
