"""sipreg's Kubernetes operator (import name `sip_operator`): SipDomains become registrar pods, SipConnections etcd records.

The modules, from pure to I/O:
- children: a SipDomain's desired Kubernetes objects (Deployment, Services, PDB, nonce Secret), pure functions.
- status: a SipConnection's and a SipDomain's status from bindings and failures, and when to patch it, pure.
- etcd_sync: the operator's side of etcd: publish domains and connections, follow bindings and failures.
- kubernetes_api: the few Kubernetes calls the operator makes (apply children, patch status, read Secrets).
- handlers: the kopf handlers that tie them together; thin.
"""
