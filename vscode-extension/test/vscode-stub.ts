// A small stand-in for the `vscode` module: only the parts extension.ts
// uses, recording what the extension shows. It lets the tests run the real
// activate() against real cells without downloading VS Code.

type Listener<T> = (e: T) => unknown;

export class EventEmitter<T> {
  private listeners: Listener<T>[] = [];
  readonly event = (l: Listener<T>) => {
    this.listeners.push(l);
    return { dispose: () => (this.listeners = this.listeners.filter((x) => x !== l)) };
  };
  fire(e: T): void {
    for (const l of this.listeners) {
      l(e);
    }
  }
  dispose(): void {
    this.listeners = [];
  }
}

export class TreeItem {
  id?: string;
  description?: string;
  tooltip?: unknown;
  iconPath?: unknown;
  contextValue?: string;
  constructor(readonly label: string) {}
}

export class ThemeIcon {
  constructor(readonly id: string) {}
}

export class ThemeColor {
  constructor(readonly id: string) {}
}

export class MarkdownString {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

export const StatusBarAlignment = { Left: 1, Right: 2 } as const;
export const ConfigurationTarget = { Global: 1, Workspace: 2, WorkspaceFolder: 3 } as const;

export interface StatusBar {
  id: string;
  name?: string;
  text: string;
  tooltip?: string | MarkdownString;
  command?: string;
  backgroundColor?: ThemeColor;
  shown: boolean;
  show(): void;
  dispose(): void;
}

export interface InputBoxOptions {
  title?: string;
  value?: string;
  password?: boolean;
  validateInput?: (v: string) => string | undefined;
}

/** What the extension did, for the assertions. */
export class Recorder {
  readonly commands = new Map<string, (...args: unknown[]) => unknown>();
  readonly info: string[] = [];
  readonly errors: string[] = [];
  readonly log: string[] = [];
  readonly config = new Map<string, unknown>();
  readonly secrets = new Map<string, string>();
  /** Answers for showInputBox, in order (undefined = the user pressed Escape). */
  readonly inputs: (string | undefined)[] = [];
  /** Which button to press on the next error message (undefined = dismiss). */
  readonly errorPicks: (string | undefined)[] = [];
  readonly inputPrompts: InputBoxOptions[] = [];
  status: StatusBar | undefined;
  treeView: { message: string | undefined; visible: boolean } | undefined;
  tree: { getChildren(e?: unknown): unknown[]; getTreeItem(e: unknown): TreeItem } | undefined;
  treeChanges = 0;
  private configListeners: Listener<{ affectsConfiguration(s: string): boolean }>[] = [];

  /** The `vscode` module the extension gets. */
  module(): Record<string, unknown> {
    const rec = this;
    return {
      EventEmitter,
      TreeItem,
      ThemeIcon,
      ThemeColor,
      MarkdownString,
      StatusBarAlignment,
      ConfigurationTarget,
      window: {
        createStatusBarItem(id: string): StatusBar {
          rec.status = { id, text: "", shown: false, show: () => (rec.status!.shown = true), dispose: () => undefined };
          return rec.status;
        },
        createOutputChannel() {
          return { appendLine: (l: string) => rec.log.push(l), show: () => undefined, dispose: () => undefined };
        },
        createTreeView(_id: string, opts: { treeDataProvider: NonNullable<Recorder["tree"]> & { onDidChangeTreeData: EventEmitter<unknown>["event"] } }) {
          rec.tree = opts.treeDataProvider;
          opts.treeDataProvider.onDidChangeTreeData(() => rec.treeChanges++);
          rec.treeView = { message: undefined, visible: true };
          return Object.assign(rec.treeView, {
            onDidChangeVisibility: new EventEmitter<{ visible: boolean }>().event,
            dispose: () => undefined,
          });
        },
        async showInformationMessage(m: string) {
          rec.info.push(m);
          return undefined;
        },
        async showErrorMessage(m: string, ..._items: string[]) {
          rec.errors.push(m);
          return rec.errorPicks.shift();
        },
        async showInputBox(o: InputBoxOptions) {
          rec.inputPrompts.push(o);
          const v = rec.inputs.shift();
          if (v !== undefined && o.validateInput?.(v)) {
            throw new Error(`the input box would refuse ${JSON.stringify(v)}: ${o.validateInput(v)}`);
          }
          return v;
        },
      },
      commands: {
        registerCommand(id: string, fn: (...args: unknown[]) => unknown) {
          if (rec.commands.has(id)) {
            throw new Error(`command ${id} registered twice`);
          }
          rec.commands.set(id, fn);
          return { dispose: () => rec.commands.delete(id) };
        },
        async executeCommand(id: string, ...args: unknown[]) {
          const fn = rec.commands.get(id);
          if (!fn) {
            throw new Error(`command '${id}' not found`);
          }
          return fn(...args);
        },
      },
      workspace: {
        getConfiguration(section: string) {
          return {
            get: <T>(key: string, def: T): T => (rec.config.has(`${section}.${key}`) ? (rec.config.get(`${section}.${key}`) as T) : def),
            update: async (key: string, value: unknown) => {
              const full = `${section}.${key}`;
              rec.config.set(full, value);
              for (const l of rec.configListeners) {
                l({ affectsConfiguration: (s: string) => full === s || full.startsWith(s + ".") });
              }
            },
          };
        },
        onDidChangeConfiguration(l: Listener<{ affectsConfiguration(s: string): boolean }>) {
          rec.configListeners.push(l);
          return { dispose: () => (rec.configListeners = rec.configListeners.filter((x) => x !== l)) };
        },
      },
    };
  }

  /** The `ExtensionContext` activate() gets. */
  context(): { subscriptions: { dispose(): unknown }[]; secrets: unknown } {
    return {
      subscriptions: [],
      secrets: {
        get: async (k: string) => this.secrets.get(k),
        store: async (k: string, v: string) => void this.secrets.set(k, v),
        delete: async (k: string) => void this.secrets.delete(k),
      },
    };
  }

  /** The tree's rows as `label | description`. */
  rows(): string[] {
    const tree = this.tree;
    if (!tree) {
      return [];
    }
    return tree.getChildren().map((r) => {
      const item = tree.getTreeItem(r);
      return `${item.label} | ${item.description ?? ""}`;
    });
  }
}
