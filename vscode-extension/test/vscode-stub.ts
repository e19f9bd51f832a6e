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

export const TreeItemCollapsibleState = { None: 0, Collapsed: 1, Expanded: 2 } as const;

export interface Command {
  command: string;
  title: string;
  arguments?: unknown[];
}

export class TreeItem {
  id?: string;
  description?: string;
  tooltip?: unknown;
  iconPath?: unknown;
  contextValue?: string;
  command?: Command;
  constructor(
    readonly label: string,
    readonly collapsibleState: number = TreeItemCollapsibleState.None,
  ) {}
}

export class ThemeIcon {
  constructor(
    readonly id: string,
    readonly color?: ThemeColor,
  ) {}
}

export class Uri {
  private constructor(private readonly value: string) {}
  static parse(value: string): Uri {
    return new Uri(value);
  }
  toString(): string {
    return this.value;
  }
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
  /** Which item to pick in the next quick pick, by label (undefined = Escape). */
  readonly quickPicks: (string | undefined)[] = [];
  /** The items each quick pick offered. */
  readonly quickPickItems: { label: string; description?: string; detail?: string }[][] = [];
  /** What env.openExternal was asked to open. */
  readonly opened: string[] = [];
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
      TreeItemCollapsibleState,
      ThemeIcon,
      Uri,
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
        async showQuickPick<T extends { label: string }>(items: T[]) {
          rec.quickPickItems.push(items);
          const label = rec.quickPicks.shift();
          return label === undefined ? undefined : items.find((i) => i.label === label);
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
      env: {
        async openExternal(uri: Uri) {
          rec.opened.push(uri.toString());
          return true;
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

  /**
   * The tree with children, as `label | description`, a child indented by
   * two spaces under its parent.
   */
  rowsDeep(): string[] {
    const tree = this.tree;
    if (!tree) {
      return [];
    }
    const lines: string[] = [];
    const walk = (parent: unknown, depth: number) => {
      for (const r of tree.getChildren(parent)) {
        const item = tree.getTreeItem(r);
        lines.push(`${"  ".repeat(depth)}${item.label} | ${item.description ?? ""}`);
        walk(r, depth + 1);
      }
    };
    walk(undefined, 0);
    return lines;
  }

  /** The tree items of a cell's children (its services), found by the cell's label. */
  childItems(cellLabel: string): TreeItem[] {
    const tree = this.tree;
    if (!tree) {
      return [];
    }
    const cell = tree.getChildren().find((r) => tree.getTreeItem(r).label === cellLabel);
    return cell === undefined ? [] : tree.getChildren(cell).map((r) => tree.getTreeItem(r));
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
